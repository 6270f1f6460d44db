"""Write a worker for a sprun pool in Python.

A sprun pool starts worker processes and sends them requests; this module
is the worker's half of that conversation.  A worker registers one handler
per operation and then serves::

    import sprun_worker

    @sprun_worker.handler("echo")
    def echo(args):
        return args

    sprun_worker.run()          # serves until end of file or SIGTERM

or passes its handlers directly: ``sprun_worker.run({"echo": echo})``.

Protocol
--------
The parent (sprun) chooses the channel and framing with environment
variables:

``SPRUN_CHANNEL``
    ``fd3`` (the default): file descriptor 3 is a Unix socket carrying both
    directions; stdin, stdout and stderr are the worker's own.
    ``stdio``: requests arrive on fd 0 and replies leave on fd 1.  Since a
    stray ``print`` would corrupt the reply stream, ``run`` then points
    ``sys.stdout`` (and fd 1 itself, for child processes and C code) at
    stderr, and points fd 0 at ``/dev/null``; the protocol keeps private
    duplicates of the original descriptors.  What the program printed
    before ``run`` and still holds in ``sys.stdout``'s buffer goes to stderr
    too, but what already reached fd 1 (Python with ``PYTHONUNBUFFERED``,
    which sprun sets, writes at once) is on the channel and breaks the
    protocol: a stdio worker must print nothing before ``run``.

``SPRUN_PROTOCOL``
    ``ndjson`` (the default): each message is one compact JSON object on
    one line ending in ``\\n`` (JSON escapes newlines inside strings, so any
    value fits on a line).  Empty lines are ignored.
    ``lp4``: each message is a 4-byte big-endian unsigned length followed
    by that many bytes of JSON.
    JSON is UTF-8 either way.  A message longer than 64 MiB (an lp4 length
    above it, or that many bytes without a newline) cannot be skipped,
    since the stream cannot be resynchronised: the worker says so on stderr
    and exits with status 3.

``SPRUN_POOL``, ``SPRUN_WORKER_ID``
    Names for the worker's own logs, available as :data:`pool_name` and
    :data:`worker_id` (``None`` when unset).

Messages, once the worker is set up:

* the worker first sends ``{"ready":true}``;
* the parent sends requests ``{"id": <integer>, "op": <string>,
  "args": <any JSON>}`` (absent ``args`` means ``None``);
* the worker answers each request exactly once, with
  ``{"id": <id>, "ok": <result>}`` or
  ``{"id": <id>, "error": {"kind": ..., "message": ..., "details": ...}}``
  (``details`` is left out when there are none).

Requests are answered in the order they arrive.  The op
``sprun.heartbeat`` is answered ``{"id": <id>, "ok": true}`` by this module
and never reaches a handler.  Error kinds produced here:

``unknown_op``
    no handler for the op (the message names the known ops);
``<kind>``
    the handler raised :class:`WorkerError` (its kind, message, details);
``error``
    the handler raised any other exception: the message is
    ``"<Type>: <text>"`` and the details hold ``type`` and ``traceback``;
``bad_reply``
    the handler's result cannot be encoded as JSON (this includes NaN and
    infinities, which JSON does not have) or encodes to more than 64 MiB;
``bad_request``
    the request is a JSON object with an integer id but no string op.

A request that is not JSON, not an object, or has no integer id cannot be
answered: the worker writes one line about it to stderr and skips it.  The
worker keeps serving after any of these.

End of file on the request channel makes :func:`run` return normally.
SIGTERM or SIGINT makes the worker stop taking requests, finish the one in
hand, write the replies it owes for requests already handled, and exit
with status 0.
"""

import errno
import json
import os
import select
import signal
import sys
import threading
import traceback

__all__ = ["WorkerError", "handler", "run", "pool_name", "worker_id",
           "HEARTBEAT_OP", "MAX_MESSAGE"]

#: The pool this worker belongs to, from ``SPRUN_POOL`` (or ``None``).
pool_name = os.environ.get("SPRUN_POOL")

#: This worker's id within its pool, from ``SPRUN_WORKER_ID`` (or ``None``).
worker_id = os.environ.get("SPRUN_WORKER_ID")

#: The op answered by the module itself, never passed to a handler.
HEARTBEAT_OP = "sprun.heartbeat"

#: The largest message, in bytes, either side accepts.
MAX_MESSAGE = 64 * 1024 * 1024

# Exit status when the request stream is broken beyond repair.
_EXIT_BAD_STREAM = 3

# Size of each read from the request channel.
_READ_SIZE = 65536

# How much of a bad request is quoted on stderr.
_SHOW_MAX = 200

_CHANNELS = ("fd3", "stdio")
_PROTOCOLS = ("ndjson", "lp4")

# Handlers registered with @handler(name).
_registry = {}

# One encoder and one decoder for every message: json.dumps with keyword
# arguments would build a new encoder on each call.  allow_nan=False because
# NaN and Infinity are not JSON and the parent could not read them.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                           allow_nan=False).encode
_decode = json.JSONDecoder().decode


class WorkerError(Exception):
    """An error a handler raises to send a reply of its own kind.

    ``kind`` is a short machine-readable string (``"not_found"``),
    ``message`` a human-readable one, ``details`` any JSON value or
    ``None`` (then left out of the reply).
    """

    def __init__(self, kind, message, details=None):
        super().__init__(kind, message, details)
        self.kind = kind
        self.message = message
        self.details = details

    def __str__(self):
        return f"{self.kind}: {self.message}"


def handler(name):
    """Register the decorated function as the handler for op ``name``.

    The function is called with the request's ``args`` (``None`` when the
    request has none) and returns the reply's ``ok`` value.  The function
    itself is returned unchanged.
    """
    if not isinstance(name, str):
        raise TypeError("handler() takes the op name, as in "
                        "@sprun_worker.handler(\"echo\"); got "
                        f"{type(name).__name__}")

    def register(fn):
        if not callable(fn):
            raise TypeError(f"handler({name!r}) must decorate a callable, "
                            f"got {type(fn).__name__}")
        _registry[name] = fn
        return fn

    return register


def run(handlers=None, *, channel=None, protocol=None):
    """Serve requests until end of file on the channel, or a signal.

    ``handlers`` maps op names to functions; it is merged over the ones
    registered with :func:`handler` (on the same name, ``handlers`` wins).
    ``channel`` (``"fd3"`` or ``"stdio"``) and ``protocol`` (``"ndjson"``
    or ``"lp4"``) override ``SPRUN_CHANNEL`` and ``SPRUN_PROTOCOL``.

    Returns at end of file; on SIGTERM or SIGINT raises ``SystemExit(0)``;
    on a stream that cannot be resynchronised raises ``SystemExit(3)``.
    """
    table = dict(_registry)
    if handlers is not None:
        table.update(handlers)
    for name, fn in table.items():
        if not isinstance(name, str):
            raise TypeError(f"op names must be strings, got {name!r}")
        if not callable(fn):
            raise TypeError(f"the handler for {name!r} is not callable "
                            f"({type(fn).__name__})")
    channel = _setting("SPRUN_CHANNEL", channel, _CHANNELS)
    protocol = _setting("SPRUN_PROTOCOL", protocol, _PROTOCOLS)
    _Server(table, channel, protocol).serve()


def _setting(env_name, given, allowed):
    value = given if given is not None else os.environ.get(env_name)
    if not value:
        return allowed[0]
    if value not in allowed:
        raise ValueError(f"{env_name} must be one of {', '.join(allowed)}; "
                         f"got {value!r}")
    return value


def _log(text):
    """Write one line about the worker to stderr (never to the channel)."""
    where = "/".join(x for x in (pool_name, worker_id) if x)
    prefix = f"sprun_worker[{where}]" if where else "sprun_worker"
    try:
        sys.stderr.write(f"{prefix}: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        # No usable stderr: there is nowhere else to say it.
        pass


def _show(raw):
    """A one-line, bounded quotation of a bad message for stderr."""
    shown = repr(raw[:_SHOW_MAX])
    if len(raw) > _SHOW_MAX:
        shown += f" ... ({len(raw)} in all)"
    return shown


def _read_chunk(fd):
    """One read of up to _READ_SIZE bytes from ``fd``; b"" at end of file."""
    while True:
        try:
            return os.read(fd, _READ_SIZE)
        except BlockingIOError:
            # The descriptor was handed over in non-blocking mode; wait
            # rather than change flags that another process may share.
            select.select([fd], [], [])
        except InterruptedError:
            # Python retries EINTR itself unless a signal handler raised;
            # kept for handlers that do.
            pass
        except ConnectionResetError:
            return b""


def _write_all(fd, data):
    """Write all of ``data`` to ``fd``, however many calls it takes."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        view = view[n:]


def _open_channel(channel):
    """Return (request fd, reply fd) for ``channel``, setting it up."""
    if channel == "fd3":
        try:
            os.fstat(3)
        except OSError:
            raise OSError(errno.EBADF, "SPRUN_CHANNEL is fd3 but file "
                          "descriptor 3 is not open (is this worker being "
                          "run by sprun?)") from None
        return 3, 3

    # stdio: keep private duplicates of fds 0 and 1 for the protocol, then
    # point fd 1 at stderr and fd 0 at /dev/null, so that nothing else in
    # the process (print, C code, child processes) can write into the reply
    # stream or read requests.  os.dup gives non-inheritable descriptors,
    # so child processes do not get the channel either.
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    # Anything already printed but still buffered now goes to stderr too.
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    sys.stdout = open(2, "w", buffering=1, encoding="utf-8",
                      errors="backslashreplace", closefd=False)
    return in_fd, out_fd


class _Stop(Exception):
    """Raised by the signal handler to break out of a blocking read."""


class _NdjsonFraming:
    """Newline-delimited JSON: splits chunks into lines, frames replies."""

    def __init__(self):
        self.buf = bytearray()      # the start of an unfinished line
        self.fatal = None           # why the stream cannot go on, if so

    def feed(self, data):
        """Return the complete messages (as text) that ``data`` finishes."""
        nl = data.rfind(b"\n")
        if nl < 0:
            self.buf += data
            if len(self.buf) > MAX_MESSAGE:
                self.fatal = (f"a request line longer than {MAX_MESSAGE} "
                              "bytes without a newline")
            return []
        if self.buf:
            chunk = self.buf
            chunk += data[:nl]
        else:
            chunk = data[:nl]
        self.buf = bytearray(data[nl + 1:])
        return self._lines(chunk)

    def finish(self):
        """At end of file: a last line without its newline still counts."""
        chunk, self.buf = self.buf, bytearray()
        return self._lines(chunk) if chunk else []

    @staticmethod
    def _lines(chunk):
        try:
            # One decode for the whole batch is much cheaper than one per
            # line; a UTF-8 character can never contain a newline byte, so
            # splitting after decoding is the same as before.
            lines = chunk.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            lines = []
            for raw in chunk.split(b"\n"):
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    _log(f"skipped a request that is not UTF-8 ({exc}): "
                         f"{_show(bytes(raw))}")
        if "" in lines:
            lines = [line for line in lines if line]
        return lines

    @staticmethod
    def frame(replies):
        """The bytes of ``replies`` (JSON texts) on the wire.

        The list is used up: a last empty item gives the final newline
        without copying the joined text again.
        """
        replies.append("")
        return "\n".join(replies).encode("utf-8")


class _Lp4Framing:
    """Length-prefixed JSON: splits chunks into frames, frames replies."""

    def __init__(self):
        self.buf = bytearray()      # the start of an unfinished frame
        self.fatal = None

    def feed(self, data):
        """Return the complete messages (as text) that ``data`` finishes."""
        buf = self.buf
        buf += data
        size = len(buf)
        messages = []
        pos = 0
        while size - pos >= 4:
            length = int.from_bytes(buf[pos:pos + 4], "big")
            if length > MAX_MESSAGE:
                self.fatal = (f"a request frame of {length} bytes (the most "
                              f"is {MAX_MESSAGE})")
                break
            end = pos + 4 + length
            if end > size:
                break
            try:
                messages.append(buf[pos + 4:end].decode("utf-8"))
            except UnicodeDecodeError as exc:
                _log(f"skipped a request that is not UTF-8 ({exc}): "
                     f"{_show(bytes(buf[pos + 4:end]))}")
            pos = end
        if pos:
            del buf[:pos]
        return messages

    def finish(self):
        """At end of file: an unfinished frame cannot be read."""
        if self.buf:
            _log(f"end of file inside a request frame; dropped "
                 f"{len(self.buf)} bytes")
            self.buf = bytearray()
        return []

    @staticmethod
    def frame(replies):
        """The bytes of ``replies`` (JSON texts) on the wire."""
        parts = []
        append = parts.append
        for text in replies:
            data = text.encode("utf-8")
            append(len(data).to_bytes(4, "big"))
            append(data)
        return b"".join(parts)


class _Server:
    """One run of the request loop over one channel."""

    def __init__(self, handlers, channel, protocol):
        self.handlers = handlers
        self.known_ops = sorted(op for op in handlers
                                if op != HEARTBEAT_OP)
        self.framing = (_Lp4Framing() if protocol == "lp4"
                        else _NdjsonFraming())
        self.in_fd, self.out_fd = _open_channel(channel)
        # stopping: a signal asked the worker to finish.  reading: the loop
        # is blocked in (or about to enter) the read, where it is safe for
        # the signal handler to interrupt it.
        self.stopping = False
        self.reading = False

    # -- signals ---------------------------------------------------------

    def _on_signal(self, signum, frame):
        self.stopping = True
        if self.reading:
            # Python retries a read interrupted by a signal unless the
            # handler raises; raising is the only way out of a blocking
            # read.  Cleared first so a second signal cannot raise again
            # outside the read.
            self.reading = False
            raise _Stop()

    def _install_signals(self):
        """Install SIGTERM/SIGINT handlers; return the ones they replace."""
        if threading.current_thread() is not threading.main_thread():
            # Only the main thread may install signal handlers.
            return {}
        saved = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            saved[sig] = signal.signal(sig, self._on_signal)
        return saved

    @staticmethod
    def _restore_signals(saved):
        for sig, old in saved.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    # -- the loop --------------------------------------------------------

    def serve(self):
        saved = self._install_signals()
        framing = self.framing
        frame = framing.frame
        in_fd, out_fd = self.in_fd, self.out_fd
        try:
            _write_all(out_fd, frame(['{"ready":true}']))
            while not self.stopping:
                # The signal handler may raise _Stop anywhere from here to
                # the end of the read (and nowhere else); it is caught
                # below, outside the loop.
                self.reading = True
                try:
                    if self.stopping:
                        break
                    data = _read_chunk(in_fd)
                finally:
                    self.reading = False
                if data:
                    messages = framing.feed(data)
                else:
                    messages = framing.finish()
                if messages:
                    replies = []
                    try:
                        self._dispatch(messages, replies)
                    except BaseException:
                        # A handler raised SystemExit or the like: deliver
                        # the replies already owed, then let it go on.
                        if replies:
                            try:
                                _write_all(out_fd, frame(replies))
                            except OSError:
                                pass
                        raise
                    if replies:
                        _write_all(out_fd, frame(replies))
                if framing.fatal:
                    _log(f"{framing.fatal}; the request stream cannot be "
                         "resynchronised, exiting")
                    raise SystemExit(_EXIT_BAD_STREAM)
                if not data:
                    break
        except _Stop:
            pass
        except (BrokenPipeError, ConnectionResetError):
            # The parent closed the channel: nobody is left to serve.
            pass
        finally:
            self.reading = False
            if not self.stopping:
                self._restore_signals(saved)
        if self.stopping:
            raise SystemExit(0)

    def _dispatch(self, messages, replies):
        """Handle ``messages`` in order, appending one reply text each."""
        # Local names: this loop runs once per request.
        decode = _decode
        encode = _encode
        get_handler = self.handlers.get
        append = replies.append
        heartbeat = HEARTBEAT_OP
        too_long = MAX_MESSAGE // 4     # chars that may exceed the limit
        for text in messages:
            if self.stopping:
                break
            try:
                msg = decode(text)
            except (ValueError, RecursionError) as exc:
                _log(f"skipped a request that is not JSON ({exc}): "
                     f"{_show(text)}")
                continue
            if type(msg) is dict:
                rid = msg.get("id")
                op = msg.get("op")
                valid = type(rid) is int and type(op) is str
            else:
                valid = False
            if not valid:
                reply = self._bad_request(msg, text)
                if reply is not None:
                    append(reply)
                continue

            if op == heartbeat:
                append(f'{{"id":{rid},"ok":true}}')
                continue
            fn = get_handler(op)
            if fn is None:
                append(self._unknown_op(rid, op))
                continue
            try:
                result = fn(msg.get("args"))
            except WorkerError as exc:
                append(self._worker_error(rid, exc))
                continue
            except Exception as exc:
                append(self._exception(rid, exc))
                continue
            try:
                reply = f'{{"id":{rid},"ok":{encode(result)}}}'
            except Exception as exc:
                append(self._bad_reply(rid, op, exc))
                continue
            if len(reply) > too_long and _too_big(reply):
                append(self._error(
                    rid, "bad_reply",
                    f"the reply to {op!r} is larger than {MAX_MESSAGE} "
                    "bytes of JSON"))
                continue
            append(reply)

    # -- replies off the common path -------------------------------------

    @staticmethod
    def _error(rid, kind, message, details=None):
        err = {"kind": kind, "message": message}
        if details is not None:
            err["details"] = details
        return f'{{"id":{rid},"error":{_encode(err)}}}'

    def _bad_request(self, msg, text):
        """Report a request that cannot be handled; reply if it has an id."""
        if type(msg) is not dict:
            why = f"not a JSON object (a {_json_type(msg)})"
        elif type(msg.get("id")) is not int:
            why = ("no integer 'id'" if "id" not in msg
                   else f"'id' is a {_json_type(msg['id'])}, not an integer")
        elif "op" not in msg:
            why = "no 'op'"
        else:
            why = f"'op' is a {_json_type(msg['op'])}, not a string"
        _log(f"bad request ({why}): {_show(text)}")
        if type(msg) is dict and type(msg.get("id")) is int:
            return self._error(msg["id"], "bad_request",
                               f"bad request: {why}")
        return None

    def _unknown_op(self, rid, op):
        known = ", ".join(self.known_ops) or "(none)"
        return self._error(rid, "unknown_op",
                           f"unknown op {op!r}; known ops: {known}",
                           {"op": op, "known_ops": self.known_ops})

    def _worker_error(self, rid, exc):
        kind, message = str(exc.kind), str(exc.message)
        try:
            return self._error(rid, kind, message, exc.details)
        except Exception as why:
            return self._error(
                rid, "bad_reply",
                f"the details of a {kind!r} error cannot be sent as JSON "
                f"({type(why).__name__}: {why}); the error was: {message}")

    def _exception(self, rid, exc):
        name = type(exc).__name__
        # Leave out the frame of this module's dispatch loop: the traceback
        # starts at the handler.
        tb = exc.__traceback__
        lines = traceback.format_exception(type(exc), exc,
                                           tb.tb_next if tb else None)
        return self._error(rid, "error", f"{name}: {exc}",
                           {"type": name, "traceback": "".join(lines)})

    def _bad_reply(self, rid, op, exc):
        return self._error(
            rid, "bad_reply",
            f"the result of {op!r} cannot be sent as JSON "
            f"({type(exc).__name__}: {exc})")


def _too_big(text):
    return len(text.encode("utf-8")) > MAX_MESSAGE


def _json_type(value):
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
