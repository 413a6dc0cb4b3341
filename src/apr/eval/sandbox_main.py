"""Runs inside the sandbox (copied next to the program): executes program.py, then test.py, in one namespace.

Before any generated code runs it sets the resource limits given as ``--limits AS,CPU,NPROC,FSIZE`` (inherited
by every process the program starts; set here rather than in a ``preexec_fn``, which is unsafe in the
multi-threaded parent) and reads a nonce from stdin. The verdict goes to the stdout the process started with,
behind that nonce: output the program prints itself, or an early ``os._exit(0)``, can never read as a pass.
"""

import os
import resource
import sys
import traceback


def main() -> int:
    _set_limits(sys.argv[sys.argv.index("--limits") + 1])
    nonce = sys.stdin.readline().strip()
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    if "--no-sockets" in sys.argv:
        _refuse_sockets()
    # Set up: from here on a missing verdict is the program's doing, never the sandbox's.
    report.write(f"{nonce} started\n")
    report.flush()
    namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        for name in ("program.py", "test.py"):
            with open(name, encoding="utf-8") as handle:
                source = handle.read()
            exec(compile(source, name, "exec"), namespace)
    except BaseException as err:  # SystemExit and KeyboardInterrupt included: such a program did not pass
        report.write(f"\n{nonce} failed {_describe(err)}\n")  # a line of its own after partial output
        report.flush()
        return 1
    report.write(f"\n{nonce} passed\n")
    report.flush()
    return 0


def _set_limits(spec: str) -> None:
    memory, cpu, processes, file_size = (int(part) for part in spec.split(","))
    for kind, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_FSIZE, file_size),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(kind, (value, value))


def _describe(err: BaseException) -> str:
    where = ""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in ("program.py", "test.py")]
    if frames:
        last = frames[-1]
        where = f" at {last.filename}:{last.lineno}" + (f": {last.line.strip()}" if last.line else "")
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return " ".join(f"{text}{where}".split())[:500]


def _refuse_sockets() -> None:
    # Only where no network namespace could be made: a weaker guard, but a program still cannot connect.
    import socket

    def refused(*args, **kwargs):
        raise OSError("network access is not allowed in the sandbox")

    socket.socket = refused  # type: ignore[assignment, misc]
    socket.create_connection = refused  # type: ignore[assignment]


if __name__ == "__main__":
    sys.exit(main())
