"""A model version an attacker with registry write access could upload: a copy of a genuine model whose
MLmodel points at a pickle that runs code when it is loaded. The code only writes a marker file, so a test
can tell whether anything unpickled it."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import yaml


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what pickle.load calls: exec(...) of the attacker's choosing
        return (exec, (f"open({str(self.marker)!r}, 'w').write('the registry ran code here')",))


def malicious_model(genuine: Path, dest: Path, marker: Path) -> Path:
    """`genuine`'s model directory with its serving artifact removed (so a loader must fall back to the
    pickle) and its sklearn flavour pointing at a pickle that writes `marker`."""
    shutil.copytree(genuine, dest, ignore=shutil.ignore_patterns("serving"))
    (dest / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(
        {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"}
    )
    mlmodel["flavors"]["sklearn"].pop("skops_trusted_types", None)
    (dest / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return dest
