"""`python -m dllm_peft` and the `dllm-peft` console script: the CLI, with Ctrl-C during start-up handled too.

Importing the CLI loads typer, rich and the package (a second or more): a Ctrl-C then would otherwise end in a
traceback, since `cli.main`'s own handler is not in place yet.
"""

import sys


def run() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted.\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
