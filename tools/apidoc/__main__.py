"""`python -m tools.apidoc [--check]`: writes deploy/openapi/ from deploy/api.binpb, or with
--check only says whether the committed files are what the descriptor set gives."""

from __future__ import annotations

import argparse
import sys

from . import DESCRIPTOR_SET, OUT_DIR, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.apidoc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    files = generate(DESCRIPTOR_SET)
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (OUT_DIR / name).is_file()
            or (OUT_DIR / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            print(f"{OUT_DIR / name} is out of date: run 'make codegen'", file=sys.stderr)
        return 1 if stale else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {', '.join(sorted(files))} into {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
