"""`make api-key`: a new API key, printed once, and its hash appended to the key file.

    python -m api.new_key --file data/api-keys.txt

Only the hash is kept (api/access.py): whoever reads the file cannot call the service. The key itself
is shown this once; lose it and make another.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from api.access import key_hash, parse_key_hashes


def add_key(path: Path) -> str:
    """A new key; its hash appended to `path` (created, readable by its owner only, if missing)."""
    if path.exists():
        parse_key_hashes(path.read_text(), str(path))  # never append to a file the service would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as file:
        file.write(f"# added {datetime.now(UTC).isoformat(timespec='seconds')}\n{key_hash(key)}\n")
    return key


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api.new_key", description=__doc__)
    parser.add_argument("--file", type=Path, required=True, help="the key file (API_KEYS_FILE)")
    args = parser.parse_args()
    key = add_key(args.file)
    print(key)
    print(f"its hash is in {args.file}; serve with API_KEYS_FILE={args.file}", file=sys.stderr)


if __name__ == "__main__":
    main()
