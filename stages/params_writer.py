"""Rewrite parts of params.yaml in place, in the style DVC writes it back.

`make contract`, and the tools that tune or retrain, change params.yaml; `dvc exp run -S` does too. All
of them go through DVC's own round-trip YAML writer (`dvc.utils.serialize.modify_yaml`, ruamel.yaml), so
the file keeps its comments, its key order and one style: block lists, `[]` for an empty list, flow
style for small records (`age: {dtype: int64, min: 17, max: 90}`), an empty value for null. A later
`-S` then changes only the line it sets.

Blocks are merged, not replaced: keys that stay keep their comments and their place, keys that go are
removed, and new keys are appended. The result is validated before it is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from stages.params import PARAMS_FILE, Params, parse

# A mapping of scalars with at most this many keys is written on one line, in flow style.
FLOW_RECORD_KEYS = 4


def _is_record(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and 0 < len(value) <= FLOW_RECORD_KEYS
        and all(not isinstance(item, Mapping | list | tuple) for item in value.values())
    )


def styled(value: Any) -> Any:
    """A plain value as ruamel nodes in the house style."""
    if isinstance(value, Mapping):
        node = CommentedMap((key, styled(item)) for key, item in value.items())
        if _is_record(value):
            node.fa.set_flow_style()
        return node
    if isinstance(value, list | tuple):
        sequence = CommentedSeq(styled(item) for item in value)
        if value:  # an empty list can only be written `[]`
            sequence.fa.set_block_style()
        return sequence
    return value


def merge(node: CommentedMap, value: Mapping[str, Any]) -> None:
    """Make `node` equal to `value`, keeping the comments and places of the keys both have."""
    for key in [key for key in node if key not in value]:
        del node[key]
    for key, item in value.items():
        current = node.get(key)
        if isinstance(item, Mapping) and isinstance(current, CommentedMap) and not _is_record(item):
            merge(current, item)
        elif current != item or type(current) is not type(item):
            node[key] = styled(item)


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {key: _plain(item) for key, item in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    return node


def update_params(changes: Mapping[str, Any], file: Path | None = None) -> Params:
    """Set each dotted key (`data`, `mlflow.model_name`, `quality.metrics.roc_auc.floor`) to its value, a
    whole block or one scalar. Nothing is written when the result would not be valid params."""
    from dvc.utils.serialize import modify_yaml

    target = file or Path(PARAMS_FILE)
    with modify_yaml(target) as document:
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = document
            for key in parents:
                node = node.setdefault(key, CommentedMap())
            current = node.get(leaf)
            if isinstance(value, Mapping) and isinstance(current, CommentedMap) and not _is_record(value):
                merge(current, value)
            elif current != value or type(current) is not type(value):
                node[leaf] = styled(value)
        # A ParamsError leaves the file as it was: modify_yaml writes only when its block ends normally.
        params = parse(_plain(document), str(target))
    return params
