#!/usr/bin/env python3
"""Load an MCP server (or a fednode node) with ``tools/call`` from several client processes.

Each of ``--workers`` worker processes runs one lean client: plain ``http.client`` over one
keep-alive connection, JSON-RPC written by hand, one call at a time (so ``--workers`` is also the
number of concurrent callers). The official SDK's ``mcp.Client`` costs the client more CPU per
call than most servers spend answering it; with it, the clients would be what is measured on a
2-core machine. The lean client speaks both eras as the SDK client does on the wire:

* ``2026-07-28``: every POST carries ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name``
  headers and the ``_meta`` envelope (protocol version, client info, client capabilities);
* ``legacy``: ``initialize`` (``2025-11-25``) and ``notifications/initialized`` once per
  connection, then ``Mcp-Session-Id`` and ``MCP-Protocol-Version`` on every call, and a DELETE of
  the session at the end.

Every answer is checked: HTTP 200, a JSON or SSE body holding the JSON-RPC response of that id, not
an error, ``isError`` false, the text ``str(a + b)`` and (where present) ``structuredContent``
``{"result": a + b}``, with ``a`` distinct per worker and call. A call that fails in any way is
counted by kind (the first few messages kept), the connection opened anew, and the run goes on.

Start is synchronised: each worker connects and makes ``--warmup`` calls, reports ready, and all
start at one instant (``time.monotonic`` is system-wide on Linux) and stop issuing calls at one
deadline; only calls completed before it count. The CPU time of the processes named with ``--pid``
is read from ``/proc`` at the start and at the deadline, so each gets CPU seconds per second and
"calls/s of its own CPU budget" (calls/s divided by its CPU seconds per second: the calls/s it
would reach with one core to itself, if the clients were free).

``--null`` starts a minimal JSON-RPC server (asyncio, canned headers, the sum computed from each
request) and loads it: the generator's own ceiling on this machine.

Usage::

    .venv/bin/python scripts/bench_load.py --null --workers 16 --duration 5
    .venv/bin/python scripts/bench_load.py --url http://127.0.0.1:PORT/mcp --tool fxa__add \\
        --mode legacy --workers 16 --duration 5 --pid node=1234

Output: one line per run, and with ``--json`` a JSON object per run as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_procs import cpu_seconds, percentile

MODES = ("2026-07-28", "legacy")
LEGACY_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "fednode-bench-load", "version": "1"}
MAX_EXAMPLES = 3  # failure messages kept per worker and run
MAX_SAMPLES = 200_000  # latencies kept per worker and run


class CallFailed(Exception):
    """A call that did not give the expected answer; ``kind`` groups it in the report."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}"[:300])
        self.kind = kind


# -- the lean client ----------------------------------------------------------------------------


class LeanClient:
    """One keep-alive HTTP connection speaking MCP JSON-RPC by hand, one call at a time."""

    def __init__(self, url: str, mode: str, tool: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://HOST:PORT/PATH, got {url!r}")
        self.host, self.port, self.path = parts.hostname, parts.port or 80, parts.path or "/"
        self.mode, self.tool, self.timeout = mode, tool, timeout
        self.connection: http.client.HTTPConnection | None = None
        self.session: str | None = None
        self.next_id = 0
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if mode == "2026-07-28":
            self.headers |= {"MCP-Protocol-Version": mode, "Mcp-Method": "tools/call", "Mcp-Name": tool}
            self.meta: dict[str, Any] = {"io.modelcontextprotocol/protocolVersion": mode,
                                         "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
                                         "io.modelcontextprotocol/clientCapabilities": {}}

    def open(self) -> None:
        """Connect (and in legacy, open a session); raises ``CallFailed``."""
        self.close(end_session=False)
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        if self.mode != "legacy":
            return
        headers = {key: value for key, value in self.headers.items()
                   if key not in ("Mcp-Session-Id", "MCP-Protocol-Version")}  # as before a session
        answer, response = self._post({"jsonrpc": "2.0", "id": self._id(), "method": "initialize",
                                       "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                                                  "clientInfo": CLIENT_INFO}}, headers)
        if "result" not in answer:
            raise CallFailed("initialize", f"no result: {str(answer)[:200]}")
        session = response.getheader("mcp-session-id")
        if not session:
            raise CallFailed("initialize", "no Mcp-Session-Id in the answer")
        self.session = session
        self.headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY_VERSION}
        status, _ = self._send("POST", json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                               self.headers)
        if status not in (200, 202):
            raise CallFailed("initialize", f"HTTP {status} for notifications/initialized")

    def call(self, a: int, b: int) -> None:
        """``tools/call`` of the tool with ``{a, b}``; returns once the answer is checked, else raises."""
        params: dict[str, Any] = {"name": self.tool, "arguments": {"a": a, "b": b}}
        if self.mode != "legacy":
            params["_meta"] = self.meta
        answer, _ = self._post({"jsonrpc": "2.0", "id": self._id(), "method": "tools/call", "params": params},
                               self.headers)
        result = answer.get("result")
        if not isinstance(result, dict):
            error = answer.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            raise CallFailed(f"JSON-RPC error {code}", str(error)[:200])
        content = result.get("content")
        text = content[0].get("text") if isinstance(content, list) and content and isinstance(content[0], dict) \
            else None
        structured = result.get("structuredContent", {"result": a + b})
        if result.get("isError") or text != str(a + b) or structured != {"result": a + b}:
            raise CallFailed("wrong result", f"add({a}, {b}) answered {str(result)[:200]}")

    def close(self, *, end_session: bool = True) -> None:
        """Close the connection; in legacy, DELETE the session first (best effort)."""
        if self.connection is None:
            return
        if end_session and self.session is not None:
            with contextlib.suppress(OSError, http.client.HTTPException, CallFailed):
                self._send("DELETE", None, self.headers)
        self.connection.close()
        self.connection = None
        self.session = None
        self.headers.pop("Mcp-Session-Id", None)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _send(self, method: str, body: str | None, headers: dict[str, str]) -> tuple[int, bytes]:
        assert self.connection is not None
        self.connection.request(method, self.path, body, headers)
        response = self.connection.getresponse()
        self._last = response
        return response.status, response.read()

    def _post(self, message: dict[str, Any], headers: dict[str, str]) -> tuple[dict[str, Any],
                                                                            http.client.HTTPResponse]:
        status, body = self._send("POST", json.dumps(message, separators=(",", ":")), headers)
        response = self._last
        if status != 200:
            raise CallFailed(f"HTTP {status}", body[:200].decode(errors="replace"))
        kind = (response.getheader("content-type") or "").split(";")[0].strip().lower()
        if kind == "application/json":
            candidates = [body]
        elif kind == "text/event-stream":  # SSE: the response is one of the data lines, notifications may precede it
            # (an empty data line is a priming event for resumption, not a message)
            candidates = [line[5:] for line in body.split(b"\n") if line.startswith(b"data:") and line[5:].strip()]
        else:
            raise CallFailed("content type", f"{kind!r} ({len(body)} bytes)")
        for candidate in candidates:
            try:
                parsed = json.loads(candidate)
            except ValueError:
                raise CallFailed("bad JSON", candidate[:200].decode(errors="replace")) from None
            if isinstance(parsed, dict) and parsed.get("id") == message["id"]:
                return parsed, response
        raise CallFailed("no response", f"no JSON-RPC answer with id {message['id']} in {body[:200]!r}")


# -- a worker process ---------------------------------------------------------------------------


def worker_main(stdin: TextIO, stdout: TextIO) -> None:
    """Serve commands (JSON lines) until ``exit`` or end of input: ``job``, then ``go``, per run."""
    client: LeanClient | None = None
    job: dict[str, Any] = {}

    def reply(message: dict[str, Any]) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    for line in stdin:
        command = json.loads(line)
        if command["op"] == "job":
            job = command
            try:
                client = LeanClient(job["url"], job["mode"], job["tool"])
                client.open()
                for i in range(job["warmup"]):
                    client.call(i, 1)
                reply({"ready": True})
            except (CallFailed, OSError, http.client.HTTPException, ValueError) as exc:
                reply({"ready": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
                if client is not None:
                    client.close()
                client = None
        elif command["op"] == "go":
            if client is None:  # it could not start: the coordinator has reported that already
                reply({"calls": 0, "failures": 0, "kinds": {}, "examples": [], "late": 0, "lat_us": [], "cpu": 0.0})
                continue
            reply(run_calls(client, job, command["start"], command["deadline"]))
            client.close()
            client = None
        else:
            break


def run_calls(client: LeanClient, job: dict[str, Any], start: float, deadline: float) -> dict[str, Any]:
    """Calls from ``start`` until ``deadline`` or ``max_calls``; counts, latencies (us) and failures."""
    clock, base = time.perf_counter, 1_000_000 * (job["index"] + 1)
    samples: list[int] = []
    kinds: dict[str, int] = {}
    examples: list[str] = []
    late = 0
    delay = start - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    cpu_before = time.process_time()
    for i in range(job["max_calls"]):
        if time.monotonic() >= deadline:
            break
        began = clock()
        try:
            client.call(base + i, 1)
        except (CallFailed, OSError, http.client.HTTPException) as exc:
            kind = exc.kind if isinstance(exc, CallFailed) else type(exc).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"{type(exc).__name__}: {exc}"[:300])
            if not isinstance(exc, CallFailed) or kind.startswith("HTTP") or kind in ("no response", "bad JSON"):
                with contextlib.suppress(CallFailed, OSError, http.client.HTTPException):
                    client.open()  # a fresh connection (and session) for the next call
            continue
        if time.monotonic() > deadline:
            late += 1  # answered after the deadline: not counted
        elif len(samples) < MAX_SAMPLES:
            samples.append(int((clock() - began) * 1e6))
    return {"calls": len(samples), "failures": sum(kinds.values()), "kinds": kinds, "examples": examples,
            "late": late, "lat_us": samples, "cpu": time.process_time() - cpu_before, "end": time.monotonic()}


# -- the coordinator ----------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One run against one target: the figures over the common window."""

    label: str
    mode: str
    workers: int
    seconds: float
    calls: int = 0
    failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    late: int = 0  # calls answered after the deadline: not counted
    client_cpu: float = 0.0  # CPU seconds of all workers over the window
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds over the window
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def cpu_per_s(self, name: str) -> float:
        return self.cpu[name] / self.seconds

    def budget_rate(self, name: str) -> float:
        """Calls/s of ``name``'s own CPU budget: calls/s over its CPU seconds per second."""
        per_s = self.cpu_per_s(name)
        return self.rate / per_s if per_s > 0 else float("inf")

    def line(self) -> str:
        if self.error:
            return f"{self.label} [{self.mode}]: not measured: {self.error}"
        text = (f"{self.label} [{self.mode}], {self.workers} client processes, {self.seconds:.1f} s: "
                f"{self.rate:,.0f} calls/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
                f"{self.failures} failed, {self.late} answered after the deadline (not counted); "
                f"clients {self.client_cpu / self.seconds:.2f} CPU s/s")
        for name in self.cpu:
            text += (f"; {name} {self.cpu_per_s(name):.2f} CPU s/s, {1000 * self.cpu[name] / max(self.calls, 1):.2f}"
                     f" ms/call, {self.budget_rate(name):,.0f} calls/s of its CPU")
        if self.kinds:
            text += f"; failures by kind {self.kinds}, e.g. {self.examples[0]!r}"
        return text


class LoadPool:
    """``workers`` worker processes, kept for several runs; ``close()`` ends them by PID."""

    def __init__(self, workers: int, log_dir: Path) -> None:
        self.workers = workers
        self.log = (log_dir / "load-workers.log").open("w")
        self.procs: list[subprocess.Popen[str]] = []
        self.lines: list[queue.Queue[str]] = []
        for _ in range(workers):
            proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
            self.procs.append(proc)
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=self._pump, args=(proc, lines), daemon=True).start()
            self.lines.append(lines)

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of output

    def _send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message) + "\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(text)
            proc.stdin.flush()

    def _collect(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        answers = []
        for index, lines in enumerate(self.lines):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"load worker {index} gave no answer within {timeout:.0f} s") from None
            if not line:
                raise RuntimeError(f"load worker {index} exited (status {self.procs[index].poll()})")
            answers.append(json.loads(line))
        return answers

    def _answer(self, index: int, until: float, *, required: bool = False) -> dict[str, Any] | None:
        """Worker ``index``'s next answer, or None if it has none by ``until`` (an error if ``required``)."""
        try:
            line = self.lines[index].get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            if required:
                raise RuntimeError(f"load worker {index} gave no answer in time") from None
            return None
        if not line:
            raise RuntimeError(f"load worker {index} exited (status {self.procs[index].poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, label: str, url: str, mode: str, tool: str, *, seconds: float, max_calls: int = 10**7,
            warmup: int = 3, pids: Callable[[], dict[str, list[int]]] | None = None) -> LoadResult:
        """One synchronised run of all workers against ``url``; never raises for a failed call.

        ``pids`` names the processes whose CPU time to read; it is called once the workers are ready,
        so that it finds the processes their sessions started (a legacy session at a node may start
        its own upstream server process).
        """
        result = LoadResult(label, mode, self.workers, seconds)
        jobs = [{"op": "job", "url": url, "mode": mode, "tool": tool, "warmup": warmup,
                 "max_calls": max_calls, "index": index} for index in range(self.workers)]
        for proc, job in zip(self.procs, jobs, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        ready = self._collect(60)
        refused = [answer["error"] for answer in ready if not answer["ready"]]
        start = time.monotonic() + 0.2
        deadline = start + seconds
        self._send({"op": "go", "start": start, "deadline": deadline})
        if refused:  # the others still run (and close their sessions), but the figures would mislead
            result.error = f"{len(refused)} of {self.workers} workers failed to start, e.g. {refused[0]}"
        processes = pids() if pids is not None else {}
        time.sleep(max(0.0, start - time.monotonic()))
        before = {name: sum(cpu_seconds(pid) for pid in ids) for name, ids in processes.items()}
        # Read the CPU times at the deadline, or once every worker is done if that comes first (--calls).
        done = [self._answer(index, deadline) for index in range(self.workers)]
        result.cpu = {name: sum(cpu_seconds(pid) for pid in ids) - before[name] for name, ids in processes.items()}
        if all(answer is not None for answer in done):
            result.seconds = max(1e-3, min(seconds, max(answer.get("end", deadline) for answer in done
                                                         if answer is not None) - start))
        late = time.monotonic() + 60
        answers: list[dict[str, Any]] = []
        for index, answer in enumerate(done):
            answer = answer if answer is not None else self._answer(index, late, required=True)
            if answer is not None and "calls" in answer:
                answers.append(answer)
        samples = sorted(sample for answer in answers for sample in answer["lat_us"])
        result.calls = len(samples)
        result.failures = sum(answer["failures"] for answer in answers)
        for answer in answers:
            for kind, count in answer["kinds"].items():
                result.kinds[kind] = result.kinds.get(kind, 0) + count
            result.examples += answer["examples"][: MAX_EXAMPLES - len(result.examples)]
        result.client_cpu = sum(answer["cpu"] for answer in answers)
        result.late = sum(answer["late"] for answer in answers)
        if samples:
            result.p50_ms, result.p99_ms = percentile(samples, 0.5) / 1000, percentile(samples, 0.99) / 1000
        return result

    def close(self) -> None:
        """Ask the workers to exit; kill (by PID) any still running after 5 s."""
        with contextlib.suppress(OSError, ValueError):
            self._send({"op": "exit"})
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.close()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


# -- a null server: the generator's ceiling -------------------------------------------------------

NULL_SERVER = r"""
import asyncio, json, os, sys, threading
# It ends when its parent does (its stdin closes), or after its lifetime (argv[1] seconds).
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: null-session\r\ncontent-length: "
class Null(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            size = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + size:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + size], self.buffer[end + 4 + size:]
            message = json.loads(body) if body else {}
            if "id" not in message:
                self.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                continue
            if message.get("method") == "tools/call":
                total = sum(message["params"]["arguments"].values())
                result = {"content": [{"type": "text", "text": str(total)}], "isError": False,
                          "structuredContent": {"result": total}, "resultType": "complete"}
            else:
                result = {"protocolVersion": "2025-11-25", "capabilities": {},
                          "serverInfo": {"name": "null", "version": "1"}}
            out = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
            self.transport.write(HEAD + str(len(out)).encode() + b"\r\n\r\n" + out)
async def main():
    server = await asyncio.get_running_loop().create_server(Null, "127.0.0.1", 0)
    print("url http://127.0.0.1:%d/mcp" % server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))
asyncio.run(main())
"""


def start_null_server(lifetime: float) -> tuple[subprocess.Popen[str], str]:
    """The null server as a subprocess that exits by itself after ``lifetime`` s; (process, URL)."""
    proc = subprocess.Popen([sys.executable, "-c", NULL_SERVER, str(lifetime)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "url":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the null server did not start (said {line!r})")
    return proc, line[1]


def stop(proc: subprocess.Popen[str]) -> None:
    """End a process this script started, by its PID (terminate, then kill after 5 s)."""
    if proc.stdin is not None:
        proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", help="the MCP endpoint, http://HOST:PORT/PATH (or --null)")
    parser.add_argument("--null", action="store_true", help="load a null JSON-RPC server (the generator's ceiling)")
    parser.add_argument("--tool", default="add", help="a tool taking {a, b} and answering a + b (add)")
    parser.add_argument("--mode", choices=MODES, default=MODES[0], help="protocol era (2026-07-28)")
    parser.add_argument("--workers", type=int, default=16, help="client processes, one call in flight each (16)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (5)")
    parser.add_argument("--calls", type=int, default=10**7, help="at most this many calls per worker")
    parser.add_argument("--warmup", type=int, default=3, help="calls per worker before the start (3)")
    parser.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                        help="a process whose CPU time to report (repeatable)")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON (last line)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker and bool(args.url) == args.null:
        parser.error("give exactly one of --url and --null")
    if args.workers < 1 or args.calls < 1 or args.warmup < 0 or not 0 < args.duration <= 600:
        parser.error("--workers and --calls must be >= 1, --warmup >= 0, 0 < --duration <= 600")
    try:
        args.pids = {name: [int(pid)] for name, pid in (item.split("=", 1) for item in args.pid)}
    except ValueError:
        parser.error("--pid takes NAME=PID")
    return args


def main(args: argparse.Namespace) -> None:
    if args.worker:
        worker_main(sys.stdin, sys.stdout)
        return
    null = None
    pool = None
    try:
        url, pids = args.url, args.pids
        if args.null:
            null, url = start_null_server(lifetime=args.duration + 120)
            pids = {"null server": [null.pid], **pids}
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            pool = LoadPool(args.workers, Path(tmp))
            try:
                result = pool.run("null server" if args.null else url, url, args.mode, args.tool,
                                  seconds=args.duration, max_calls=args.calls, warmup=args.warmup,
                                  pids=lambda: pids)
            finally:
                pool.close()
        print(result.line(), flush=True)
        if args.json:
            print(json.dumps({**asdict(result), "rate": result.rate}), flush=True)
    finally:
        if null is not None:
            stop(null)


if __name__ == "__main__":
    main(parse_args())
