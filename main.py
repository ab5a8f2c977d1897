"""Generate personalised responses: python main.py --method amulet --pref_name creative ..."""

import sys

from config import config_from_args
from DecodingMethodsModels.errors import UserError


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
        from DecodingMethodsModels.runner import run

        run(config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished batches are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
