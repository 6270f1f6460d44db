"""Tests for python/sprun_worker.py, the worker side of sprun's pool protocol.

Most tests start a real worker process running a small script, talk to it
the way sprun does (over fd 3 or over stdin/stdout, framed as ndjson or
lp4) and check what comes back.  The same tests run for each channel and
framing.  Every read has a deadline, so a broken worker fails a test
instead of hanging it, and every test kills and reaps its worker.

Run with:  cd tests/python && python3 -m unittest -v test_sprun_worker
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "python"))
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)

import sprun_worker  # noqa: E402  (needs the path above)

# The longest any single wait may take before the test fails.
TIMEOUT = 10.0

MAX_MESSAGE = 64 * 1024 * 1024

# The worker used by most tests.  It prints at start-up, before run(), so
# that the stdio tests also check that such output stays off the channel.
WORKER_SCRIPT = textwrap.dedent('''\
    import subprocess
    import sys
    import time

    sys.path.insert(0, {python_dir!r})
    import sprun_worker

    print("worker script starting")

    heartbeat_calls = []


    @sprun_worker.handler("echo")
    def echo(args):
        return args


    @sprun_worker.handler("dup")
    def dup(args):
        return "registry"


    @sprun_worker.handler("sprun.heartbeat")
    def heartbeat_spy(args):
        heartbeat_calls.append(args)
        return "a user handler answered the heartbeat"


    @sprun_worker.handler("heartbeat_calls")
    def count_heartbeat_calls(args):
        return len(heartbeat_calls)


    @sprun_worker.handler("worker_error")
    def worker_error(args):
        raise sprun_worker.WorkerError("not_found", "no such key",
                                       {{"key": args}})


    @sprun_worker.handler("worker_error_plain")
    def worker_error_plain(args):
        raise sprun_worker.WorkerError("busy", "try later")


    @sprun_worker.handler("fail")
    def fail(args):
        raise ValueError("boom " + str(args))


    @sprun_worker.handler("unencodable")
    def unencodable(args):
        return {{"a set": {{1, 2}}}}


    @sprun_worker.handler("nan")
    def nan(args):
        return float("nan")


    @sprun_worker.handler("print")
    def do_print(args):
        print("hello")
        return "printed"


    @sprun_worker.handler("child_print")
    def child_print(args):
        subprocess.run([sys.executable, "-c", "print('from a child')"],
                       check=True)
        return "child printed"


    @sprun_worker.handler("sleep")
    def sleep(args):
        sys.stderr.write("sleeping\\n")
        sys.stderr.flush()
        time.sleep(args)
        return "slept"


    @sprun_worker.handler("whoami")
    def whoami(args):
        return [sprun_worker.pool_name, sprun_worker.worker_id]


    sprun_worker.run({{
        "add": lambda a: a["x"] + a["y"],
        "dup": lambda a: "dict",
    }})
''')

# Runs in the child: moves the socket end it was given to fd 3, then
# becomes the worker.  Doing this in a launcher rather than in preexec_fn
# keeps the fork safe while the test has threads running.
LAUNCHER = textwrap.dedent('''\
    import os, sys
    fd = int(sys.argv[1])
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    os.set_inheritable(3, True)
    os.execv(sys.executable, [sys.executable] + sys.argv[2:])
''')

# Absent args in a request, as opposed to "args": null.
NO_ARGS = object()


class _Drain(threading.Thread):
    """Collects everything a worker writes to one of its output pipes."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.data = bytearray()
        self.lock = threading.Lock()

    def run(self):
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self):
        with self.lock:
            return self.data.decode("utf-8", "replace")


class Worker:
    """A worker process and the parent's end of its channel."""

    def __init__(self, test, channel, protocol, env=None, script=None):
        self.test = test
        self.protocol = protocol
        self.buf = bytearray()
        self.next_id = 1
        self.sock = None

        tmp = tempfile.TemporaryDirectory()
        test.addCleanup(tmp.cleanup)
        path = os.path.join(tmp.name, "worker.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write((script or WORKER_SCRIPT).format(python_dir=PYTHON_DIR))

        child_env = {k: v for k, v in os.environ.items()
                     if not k.startswith("SPRUN_")}
        # Block-buffered stdout, so that what the script prints before
        # run() is still in its buffer when run() points fd 1 at stderr
        # (with PYTHONUNBUFFERED it would already be on the channel: a
        # stdio worker must print nothing before run(), see the module).
        child_env.pop("PYTHONUNBUFFERED", None)
        child_env["SPRUN_CHANNEL"] = channel
        child_env["SPRUN_PROTOCOL"] = protocol
        child_env.update(env or {})

        if channel == "fd3":
            parent_end, child_end = socket.socketpair()
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", LAUNCHER,
                     str(child_end.fileno()), path],
                    pass_fds=(child_end.fileno(),), env=child_env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
            except BaseException:
                parent_end.close()
                raise
            finally:
                child_end.close()
            parent_end.setblocking(False)
            self.sock = parent_end
            self.read_fd = self.write_fd = parent_end.fileno()
            self.stdout = _Drain(self.proc.stdout)
            self.stdout.start()
        else:
            self.proc = subprocess.Popen(
                [sys.executable, path], env=child_env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
            self.read_fd = self.proc.stdout.fileno()
            self.write_fd = self.proc.stdin.fileno()
            os.set_blocking(self.read_fd, False)
            os.set_blocking(self.write_fd, False)
            self.stdout = None
        self.stderr = _Drain(self.proc.stderr)
        self.stderr.start()
        test.addCleanup(self.close)

    # -- cleanup ---------------------------------------------------------

    def close(self):
        self.close_input()
        if self.sock is not None:
            self.sock.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        for drain in (self.stdout, self.stderr):
            if drain is not None:
                drain.join(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def close_input(self):
        """End of file on the worker's request channel."""
        if self.sock is not None:
            if self.sock.fileno() >= 0:
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        elif self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    # -- sending ---------------------------------------------------------

    def frame_raw(self, payload):
        if self.protocol == "lp4":
            return len(payload).to_bytes(4, "big") + payload
        return payload + b"\n"

    def frame(self, obj):
        # Raw UTF-8, as sprun sends it (lua-cjson escapes no non-ASCII).
        return self.frame_raw(
            json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    def request_bytes(self, op, args=NO_ARGS, rid=None):
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        msg = {"id": rid, "op": op}
        if args is not NO_ARGS:
            msg["args"] = args
        return rid, self.frame(msg)

    def send(self, data):
        """Write all of ``data``, failing the test if it takes too long."""
        view = memoryview(data)
        deadline = time.monotonic() + TIMEOUT
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                self.test.fail("timed out writing to the worker" +
                               self.diagnostics())
            _, writable, _ = select.select([], [self.write_fd], [], left)
            if writable:
                try:
                    n = os.write(self.write_fd, view)
                except BlockingIOError:
                    continue
                view = view[n:]

    # -- receiving -------------------------------------------------------

    def _take(self):
        """One whole message from the buffer, or None."""
        buf = self.buf
        if self.protocol == "lp4":
            if len(buf) < 4:
                return None
            size = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + size:
                return None
            payload = bytes(buf[4:4 + size])
            del buf[:4 + size]
        else:
            nl = buf.find(b"\n")
            if nl < 0:
                return None
            payload = bytes(buf[:nl])
            del buf[:nl + 1]
        return json.loads(payload.decode("utf-8"))

    def _fill(self, deadline):
        """Read more into the buffer; False at end of file."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([self.read_fd], [], [], left)
        if not readable:
            return None
        try:
            chunk = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_message(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            got = self._fill(deadline)
            if got is None:
                self.test.fail("timed out waiting for a message from the "
                               "worker" + self.diagnostics())
            if got is False:
                self.test.fail("the worker closed its channel" +
                               self.diagnostics())

    def expect_nothing(self, wait):
        """Fail if any byte arrives on the channel within ``wait`` s."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.buf:
                break
            if self._fill(deadline) is False:
                break
        self.test.assertEqual(bytes(self.buf), b"",
                              "the worker sent something too early")

    def expect_eof(self, timeout=TIMEOUT):
        """The channel ends with nothing more on it."""
        deadline = time.monotonic() + timeout
        while True:
            got = self._fill(deadline)
            if got is None:
                self.test.fail("timed out waiting for the worker to close "
                               "its channel" + self.diagnostics())
            if got is False:
                break
        self.test.assertEqual(bytes(self.buf), b"")

    def call(self, op, args=NO_ARGS):
        """Send one request and return its reply (checking the id)."""
        rid, data = self.request_bytes(op, args)
        self.send(data)
        reply = self.read_message()
        self.test.assertEqual(reply.get("id"), rid, reply)
        return reply

    def ready(self):
        self.test.assertEqual(self.read_message(), {"ready": True})
        return self

    # -- the process -----------------------------------------------------

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.test.fail("the worker did not exit" + self.diagnostics())

    def wait_stderr(self, text, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while text not in self.stderr.text():
            if time.monotonic() > deadline:
                self.test.fail(f"{text!r} never appeared on stderr" +
                               self.diagnostics())
            time.sleep(0.005)

    def wait_log_lines(self, n, timeout=TIMEOUT):
        """The log lines once there are at least ``n`` (stderr is read by a
        thread of its own, so a line may lag behind the replies)."""
        deadline = time.monotonic() + timeout
        while len(self.log_lines()) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.log_lines()

    def log_lines(self):
        """The lines sprun_worker itself wrote to stderr."""
        return [line for line in self.stderr.text().splitlines()
                if line.startswith("sprun_worker")]

    def diagnostics(self):
        return f"\n--- worker stderr ---\n{self.stderr.text()[-4000:]}"


class WorkerTests:
    """Tests that run for every channel and framing (mixed in below)."""

    CHANNEL = None
    PROTOCOL = None

    def spawn(self, **kwargs):
        return Worker(self, self.CHANNEL, self.PROTOCOL, **kwargs)

    def start(self, **kwargs):
        return self.spawn(**kwargs).ready()

    def assertServing(self, worker):
        """The worker still answers an ordinary request."""
        self.assertEqual(worker.call("echo", "still here")["ok"],
                         "still here")

    # -- start-up and round trips ----------------------------------------

    def test_ready_comes_first(self):
        worker = self.spawn()
        # Sent before the worker can have set up: ready must still be the
        # first thing on the channel, and the request answered after it.
        rid, data = worker.request_bytes("echo", "early")
        worker.send(data)
        self.assertEqual(worker.read_message(), {"ready": True})
        self.assertEqual(worker.read_message(), {"id": rid, "ok": "early"})

    def test_echo_unicode_and_newlines(self):
        worker = self.start()
        args = {
            "text": "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001f600",
            "newlines": "line one\nline two\r\n\tend\n",
            "nested": [1, -2.5, None, True, {"k": "v\n\u00e9"}],
            "\u00e9 key": "",
        }
        self.assertEqual(worker.call("echo", args), {"id": 1, "ok": args})
        self.assertEqual(worker.call("echo", "\n"), {"id": 2, "ok": "\n"})

    def test_absent_args_mean_none(self):
        worker = self.start()
        self.assertEqual(worker.call("echo"), {"id": 1, "ok": None})

    def test_run_handlers_merge_over_registry(self):
        worker = self.start()
        self.assertEqual(worker.call("add", {"x": 2, "y": 40})["ok"], 42)
        self.assertEqual(worker.call("dup")["ok"], "dict")
        self.assertEqual(worker.call("echo", 1)["ok"], 1)

    def test_10000_pipelined_requests(self):
        worker = self.start()
        count = 10000
        data = b"".join(
            worker.request_bytes("echo", {"i": i, "s": "\u00e9" * (i % 7)},
                                 rid=i)[1]
            for i in range(count))
        # The requests go in one write from another thread while this one
        # reads, as a pipe or socket buffer cannot hold all the replies.
        errors = []

        def write():
            try:
                worker.send(data)
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            for i in range(count):
                reply = worker.read_message()
                self.assertEqual(
                    reply, {"id": i, "ok": {"i": i, "s": "\u00e9" * (i % 7)}})
        finally:
            writer.join(TIMEOUT)
        self.assertFalse(writer.is_alive())
        self.assertEqual(errors, [])
        worker.expect_nothing(0.05)

    def test_request_split_byte_by_byte(self):
        worker = self.start()
        args = "\u00e9\u20ac\U0001f600 split"
        rid, data = worker.request_bytes("echo", args)
        # Non-ASCII characters put UTF-8 sequences of 2, 3 and 4 bytes in
        # the stream, and each byte goes in a write of its own.
        self.assertGreater(len(data), len(data.decode("utf-8")))
        for i in range(len(data) - 1):
            worker.send(data[i:i + 1])
            time.sleep(0.002)
        worker.expect_nothing(0.05)
        worker.send(data[-1:])
        self.assertEqual(worker.read_message(), {"id": rid, "ok": args})

    def test_request_split_at_every_position(self):
        worker = self.start()
        args = "\u00e9\U0001f600"
        for cut in range(1, len(worker.request_bytes("echo", args)[1])):
            rid, data = worker.request_bytes("echo", args)
            worker.send(data[:cut])
            time.sleep(0.002)
            worker.send(data[cut:])
            self.assertEqual(worker.read_message(), {"id": rid, "ok": args})

    # -- errors ----------------------------------------------------------

    def test_worker_error(self):
        worker = self.start()
        self.assertEqual(worker.call("worker_error", "k"), {
            "id": 1,
            "error": {"kind": "not_found", "message": "no such key",
                      "details": {"key": "k"}},
        })
        self.assertServing(worker)
        self.assertEqual(worker.call("worker_error_plain"), {
            "id": 3, "error": {"kind": "busy", "message": "try later"}})
        self.assertServing(worker)

    def test_exception(self):
        worker = self.start()
        reply = worker.call("fail", "x")
        error = reply["error"]
        self.assertEqual(error["kind"], "error")
        self.assertEqual(error["message"], "ValueError: boom x")
        self.assertEqual(error["details"]["type"], "ValueError")
        tb = error["details"]["traceback"]
        self.assertIn("Traceback (most recent call last)", tb)
        self.assertIn("in fail", tb)
        self.assertIn("ValueError: boom x", tb)
        self.assertServing(worker)

    def test_unknown_op(self):
        worker = self.start()
        error = worker.call("nope", 1)["error"]
        self.assertEqual(error["kind"], "unknown_op")
        self.assertIn("'nope'", error["message"])
        for op in ("echo", "add", "fail"):
            self.assertIn(op, error["message"])
        self.assertServing(worker)

    def test_unencodable_result(self):
        worker = self.start()
        for op in ("unencodable", "nan"):
            error = worker.call(op)["error"]
            self.assertEqual(error["kind"], "bad_reply", op)
            self.assertIn(op, error["message"])
            self.assertServing(worker)
        self.assertIn("set", worker.call("unencodable")["error"]["message"])

    def test_heartbeat(self):
        worker = self.start()
        self.assertEqual(worker.call("sprun.heartbeat"), {"id": 1, "ok": True})
        self.assertEqual(worker.call("sprun.heartbeat", {"x": 1}),
                         {"id": 2, "ok": True})
        self.assertEqual(worker.call("heartbeat_calls")["ok"], 0)

    # -- bad input -------------------------------------------------------

    def test_malformed_requests_are_skipped(self):
        worker = self.start()
        bad = [
            b"not json at all",
            b"[1, 2, 3]",
            b'{"op": "echo", "args": 1}',           # no id
            b'{"id": true, "op": "echo"}',          # a boolean is no id
            b'{"id": 1.5, "op": "echo"}',
            b'\xff\xfe{"id": 99, "op": "echo"}',    # not UTF-8
            b"x" * 1000,
        ]
        data = b"".join(worker.frame_raw(raw) for raw in bad)
        # Objects with an integer id but no usable op are answered.
        data += worker.frame_raw(b'{"id": 7}')
        data += worker.frame_raw(b'{"id": 8, "op": 5}')
        data += worker.request_bytes("echo", "after", rid=9)[1]
        worker.send(data)
        for rid in (7, 8):
            reply = worker.read_message()
            self.assertEqual(reply["id"], rid)
            self.assertEqual(reply["error"]["kind"], "bad_request")
        self.assertEqual(worker.read_message(), {"id": 9, "ok": "after"})
        self.assertServing(worker)

        # One line on stderr for each bad request.
        lines = worker.wait_log_lines(len(bad) + 2)
        self.assertEqual(len(lines), len(bad) + 2, lines)
        self.assertTrue(any("not json at all" in line for line in lines))
        # The 1000-byte input is quoted only in part.
        long_lines = [line for line in lines if "xxxx" in line]
        self.assertEqual(len(long_lines), 1, lines)
        self.assertLess(len(long_lines[0]), 400)

    # -- output ----------------------------------------------------------

    def test_print_in_handler_stays_off_the_channel(self):
        worker = self.start()
        # A stray line in the reply stream would make the next reply
        # unreadable (ndjson) or be taken for a frame length (lp4).
        self.assertEqual(worker.call("print")["ok"], "printed")
        self.assertEqual(worker.call("child_print")["ok"], "child printed")
        self.assertServing(worker)
        worker.close_input()
        worker.expect_eof()
        self.assertEqual(worker.wait_exit(), 0)
        worker.close()
        output = self.printed_output(worker)
        for text in ("worker script starting\n", "hello\n",
                     "from a child\n"):
            self.assertIn(text, output)

    # -- ending ----------------------------------------------------------

    def test_eof_exits_zero(self):
        worker = self.start()
        rid, data = worker.request_bytes("echo", "last")
        worker.send(data)
        worker.close_input()
        self.assertEqual(worker.read_message(), {"id": rid, "ok": "last"})
        worker.expect_eof()
        self.assertEqual(worker.wait_exit(), 0)

    def test_sigterm_while_idle_exits_zero(self):
        worker = self.start()
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.wait_exit(), 0, worker.diagnostics())

    def test_sigint_while_idle_exits_zero(self):
        worker = self.start()
        worker.proc.send_signal(signal.SIGINT)
        self.assertEqual(worker.wait_exit(), 0, worker.diagnostics())

    def test_sigterm_during_request_finishes_it(self):
        worker = self.start()
        rid, data = worker.request_bytes("sleep", 0.3)
        worker.send(data)
        worker.wait_stderr("sleeping")
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.read_message(), {"id": rid, "ok": "slept"})
        self.assertEqual(worker.wait_exit(), 0, worker.diagnostics())

    # -- environment -----------------------------------------------------

    def test_pool_name_and_worker_id(self):
        worker = self.start(env={"SPRUN_POOL": "images",
                                 "SPRUN_WORKER_ID": "w7"})
        self.assertEqual(worker.call("whoami")["ok"], ["images", "w7"])

    def test_pool_name_and_worker_id_unset(self):
        worker = self.start()
        self.assertEqual(worker.call("whoami")["ok"], [None, None])


class Fd3Tests(WorkerTests):
    CHANNEL = "fd3"

    def printed_output(self, worker):
        # With fd 3 as the channel, stdout is the worker's own.
        return worker.stdout.text()


class StdioTests(WorkerTests):
    CHANNEL = "stdio"

    def printed_output(self, worker):
        # With stdio as the channel, anything printed goes to stderr.
        return worker.stderr.text()


class NdjsonTests:
    PROTOCOL = "ndjson"

    def test_oversized_line_exits_3(self):
        worker = self.start()
        worker.send(b"x" * (MAX_MESSAGE + 1))
        self.assertEqual(worker.wait_exit(), 3, worker.diagnostics())
        self.assertTrue(any("longer than" in line
                            for line in worker.wait_log_lines(1)),
                        worker.diagnostics())

    def test_blank_lines_are_ignored(self):
        worker = self.start()
        rid, data = worker.request_bytes("echo", "x")
        worker.send(b"\n\n" + data + b"\n")
        self.assertEqual(worker.read_message(), {"id": rid, "ok": "x"})
        self.assertServing(worker)
        self.assertEqual(worker.log_lines(), [])

    def test_last_line_without_newline_is_answered_at_eof(self):
        worker = self.start()
        rid, data = worker.request_bytes("echo", "tail")
        worker.send(data.rstrip(b"\n"))
        worker.close_input()
        self.assertEqual(worker.read_message(), {"id": rid, "ok": "tail"})
        self.assertEqual(worker.wait_exit(), 0)


class Lp4Tests:
    PROTOCOL = "lp4"

    def test_oversized_frame_header_exits_3(self):
        worker = self.start()
        rid, data = worker.request_bytes("echo", "before")
        # A good request, then a header announcing one byte too many: the
        # request is still answered before the worker gives up.
        worker.send(data + (MAX_MESSAGE + 1).to_bytes(4, "big"))
        self.assertEqual(worker.read_message(), {"id": rid, "ok": "before"})
        self.assertEqual(worker.wait_exit(), 3, worker.diagnostics())
        self.assertTrue(any(str(MAX_MESSAGE + 1) in line
                            for line in worker.wait_log_lines(1)),
                        worker.diagnostics())

    def test_empty_frame_is_skipped(self):
        worker = self.start()
        worker.send(b"\0\0\0\0")
        self.assertServing(worker)
        self.assertEqual(len(worker.wait_log_lines(1)), 1,
                         worker.diagnostics())


class Fd3NdjsonTests(NdjsonTests, Fd3Tests, unittest.TestCase):
    pass


class Fd3Lp4Tests(Lp4Tests, Fd3Tests, unittest.TestCase):
    pass


class StdioNdjsonTests(NdjsonTests, StdioTests, unittest.TestCase):
    pass


class StdioLp4Tests(Lp4Tests, StdioTests, unittest.TestCase):
    pass


class ApiTests(unittest.TestCase):
    """The module's Python API, in this process (no channel involved)."""

    def test_worker_error_fields(self):
        exc = sprun_worker.WorkerError("timeout", "too slow", {"ms": 5})
        self.assertEqual((exc.kind, exc.message, exc.details),
                         ("timeout", "too slow", {"ms": 5}))
        self.assertIsNone(sprun_worker.WorkerError("k", "m").details)
        self.assertIsInstance(exc, Exception)

    def test_handler_registers_and_returns_the_function(self):
        def fn(args):
            return args

        self.addCleanup(sprun_worker._registry.pop, "api_test_op", None)
        self.assertIs(sprun_worker.handler("api_test_op")(fn), fn)
        self.assertIs(sprun_worker._registry["api_test_op"], fn)

    def test_handler_needs_a_name(self):
        with self.assertRaises(TypeError):
            sprun_worker.handler(lambda args: args)

    def test_run_rejects_bad_settings(self):
        # Checked before any channel is touched.
        with self.assertRaises(ValueError):
            sprun_worker.run({}, channel="fd4")
        with self.assertRaises(ValueError):
            sprun_worker.run({}, channel="stdio", protocol="xml")
        with self.assertRaises(TypeError):
            sprun_worker.run({"op": 5}, channel="stdio")


if __name__ == "__main__":
    unittest.main()
