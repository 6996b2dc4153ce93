"""``python -m auditor``: the same command line as the ``auditor`` console script."""

from auditor.cli import main

if __name__ == "__main__":
    main(prog_name="auditor")
