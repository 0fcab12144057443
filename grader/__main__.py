"""python -m grader COMMAND ...  — the course's command-line tool."""
import argparse
import importlib
import sys

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "release": ("grader.release", "regenerate notebooks/ from solutions/ (or --check)"),
    "check": ("grader.selfcheck", "run a notebook's visible tests and print a per-exercise score"),
    "grade": ("grader.grade", "autograde a folder of submissions with nbgrader"),
    "bench": ("grader.bench", "run the course's benchmarks"),
    "gpu-check": ("grader.gpu_check", "on a CUDA GPU: run notebooks 07 and 06 and the GPU benchmarks, write OUT/gpu.json"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(missing=True)
    args = parser.parse_args(argv)
    if getattr(args, "missing", False):
        print(f"'{args.command}' is not available yet.", file=sys.stderr)
        return 2
    return importlib.import_module(args.module).main(args)


if __name__ == "__main__":
    sys.exit(main())
