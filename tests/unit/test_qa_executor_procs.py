"""The executor's process mechanics on real subprocesses: deadlines, signals, tracebacks, servers."""

from __future__ import annotations

import sys
import textwrap
import time

from apr.qa.procs import Ending, run_process
from apr.qa.serve_session import serve, wait_ready


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_clean_exit_is_ok_and_keeps_stdout():
    result = run_process(python("print('hello')"), timeout_s=20)
    assert result.ending is Ending.OK
    assert result.stdout.strip() == "hello"


def test_stdin_reaches_the_program():
    result = run_process(python("import sys; print(sys.stdin.read().upper())"), timeout_s=20, stdin_text="abc\n")
    assert result.stdout.strip() == "ABC"


def test_hung_program_is_killed_at_the_deadline_as_timeout():
    started = time.monotonic()
    result = run_process(python("import time; time.sleep(60)"), timeout_s=1.0)
    assert result.ending is Ending.TIMEOUT
    assert time.monotonic() - started < 20
    assert "deadline" in result.reason()


def test_children_of_a_hung_program_die_with_it():
    # The child writes its pid and sleeps; after the deadline that pid must be gone.
    code = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
        print(child.pid, flush=True)
        time.sleep(60)
    """
    result = run_process(python(code), timeout_s=2.0)
    assert result.ending is Ending.TIMEOUT
    child_pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child_pid}/status") as status:
                if "zombie" in status.read():
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"child {child_pid} outlived the killed program")


def test_signal_death_is_a_crash_naming_the_signal():
    result = run_process(python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), timeout_s=20)
    assert result.ending is Ending.CRASHED
    assert "SIGSEGV" in result.reason()


def test_traceback_is_a_crash_quoting_the_last_stderr_lines():
    result = run_process(python("raise RuntimeError('tensor went missing')"), timeout_s=20)
    assert result.ending is Ending.CRASHED
    assert "RuntimeError: tensor went missing" in result.reason()


def test_clean_error_exit_is_refused_not_crashed():
    result = run_process(
        python("import sys; print('error: bad model file', file=sys.stderr); sys.exit(2)"), timeout_s=20
    )
    assert result.ending is Ending.REFUSED
    assert "bad model file" in result.reason()


SERVER = """
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b'pong')
        def log_message(self, *a): pass
    srv = http.server.HTTPServer(('127.0.0.1', 0), H)
    print(f'apr serve: ready at http://127.0.0.1:{srv.server_port}', flush=True)
    srv.serve_forever()
"""


def test_server_session_finds_the_ready_url_and_stops_the_server():
    import urllib.request

    with serve(python(SERVER)) as session:
        assert wait_ready(session, time.monotonic() + 20)
        with urllib.request.urlopen(session.base_url + "/ping", timeout=10) as reply:
            assert reply.read() == b"pong"
        proc = session.proc
    assert proc.poll() is not None


def test_server_that_dies_before_ready_is_reported_as_a_crash():
    with serve(python("raise SystemError('cannot bind')")) as session:
        assert not wait_ready(session, time.monotonic() + 20)
        session.proc.wait(timeout=10)
        assert session.result().ending is Ending.CRASHED
