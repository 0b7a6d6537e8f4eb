#!/usr/bin/env python3
"""Integration tests of iommu-policyd's admin socket (docs/ADMIN.md) with the real qemu.qmp client.

    python3 Tests/admin/test_admin.py PATH/TO/iommu-policyd PATH/TO/iommu-policyctl [--keep]

The binaries may also be given as $IOMMU_POLICYD and $IOMMU_POLICYCTL. The script starts the
daemon in a fresh temporary directory, drives its admin socket with qemu.qmp's QMPClient (and a
raw socket where QMPClient would hide what is being tested), makes tenants with
`iommu-policyctl` and with a small vfio-user client of its own, and checks what the admin plane
reports. It prints one line per check, then `N passed, N failed`, and exits 1 on any failure
(after printing the tail of the daemon's log). The checks that run a process as uid 65534
(`setpriv`) need root; without root they are skipped, and the script says so.

Needs Python 3.8+, qemu.qmp and prometheus_client. No pytest.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback

from prometheus_client.parser import text_string_to_metric_families
from qemu.qmp import EventListener, ExecuteError, QMPClient

NOBODY = 65534
MSI_FIRST = 0xFEE00000
MSI_LAST = 0xFEEFFFFF
APERTURE_LAST = (1 << 48) - 1
PAGE_SIZES = 0x40201000  # 4K | 2M | 1G
GROUPS = 3  # --profile-groups: one group per concurrently mapping tenant
DOCUMENTED_COMMANDS = {
    "qmp_capabilities", "query-commands", "query-version", "query-platform", "query-reserved-regions",
    "query-usable-ranges", "query-tenants", "query-mappings", "explain-map", "add-reserved-region",
    "remove-reserved-region", "revoke-tenant", "reload", "query-stats", "query-metrics", "getfd", "closefd",
    "add-client",
}
REGION_KINDS = {"msi", "sw-msi", "direct", "direct-relaxable", "reserved", "peer-mmio", "outside-aperture"}
DENIAL_FIELDS = [
    "session-id", "tenant-uid", "tenant-gid", "tenant-pid", "iommu-group", "dma-iova", "dma-size", "dma-flags",
    "decision", "errno", "reason", "region-kind", "region-source",
]
EINVAL, EPERM = 22, 1


# ---------------------------------------------------------------------------------------------
# Reporting


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok    {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return bool(ok)

    def equal(self, name, actual, expected):
        return self.check(name, actual == expected, f"got {actual!r}, expected {expected!r}")

    def skip(self, name, reason):
        self.skipped += 1
        print(f"skip  {name}: {reason}", flush=True)

    def note(self, text):
        print(f"      note: {text}", flush=True)


R = Results()


def as_int(value):
    """An integer from a JSON integer or a decimal or 0x-hex string (audit fields are strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""), 0)
        except ValueError:
            return None
    return None


def mentions(obj, number):
    """Whether a JSON document holds `number` anywhere, as an integer or a numeric string."""
    if isinstance(obj, dict):
        return any(mentions(v, number) for v in obj.values())
    if isinstance(obj, list):
        return any(mentions(v, number) for v in obj)
    return as_int(obj) == number


async def eventually(what, condition, timeout=10.0, interval=0.02):
    """Polls `condition` (a coroutine function or function) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            last = value
        except Exception as error:  # noqa: BLE001 - a poll may race a state change
            last = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The daemon


class Daemon:
    def __init__(self, binary, directory, extra_arguments=()):
        self.binary = binary
        self.dir = directory
        self.tenant_socket = os.path.join(directory, "tenant.sock")
        self.admin_socket = os.path.join(directory, "admin.sock")
        self.policy = os.path.join(directory, "policy.toml")
        self.metrics = os.path.join(directory, "metrics.prom")
        self.state = os.path.join(directory, "state")
        self.log_path = os.path.join(directory, "daemon.log")
        self.extra_arguments = list(extra_arguments)
        self.process = None
        self.starts = 0

    def arguments(self):
        return [
            self.binary, "--socket", self.tenant_socket, "--socket-mode", "0666", "--admin-socket", self.admin_socket,
            "--admin-socket-mode", "0666", "--config", self.policy, "--metrics-textfile", self.metrics,
            "--state-directory", self.state, "--log-target", "stderr", "--log-level", "debug",
        ] + self.extra_arguments

    async def start(self):
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"===== start {self.starts}: {' '.join(self.arguments())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.arguments(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        await eventually("the daemon's sockets", self._ready, timeout=15)

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited at start-up with status {self.process.returncode}")
        for path in (self.tenant_socket, self.admin_socket):
            try:
                if not stat.S_ISSOCK(os.stat(path).st_mode):
                    return False
            except FileNotFoundError:
                return False
        # The admin socket is up once it greets (a tenant probe would count as a session).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(self.admin_socket)
                return probe.recv(4096).startswith(b'{"QMP"')
            except OSError:
                return False

    def stop(self, timeout=15):
        """SIGTERM; returns the exit status (SIGKILL after `timeout`)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return "killed after SIGTERM timed out"

    def log(self):
        try:
            with open(self.log_path, "rb") as log:
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=80):
        """The last lines of the log, with long runs of region add/remove records (the slow-reader
        flood) folded into one line."""
        folded, run = [], []
        flood = re.compile(r"audit\.event=region-(added|removed)")

        def flush():
            folded.extend(run if len(run) <= 4 else run[:2] + [f"  [... {len(run) - 2} more region records]"])
            run.clear()

        for line in self.log().splitlines():
            if flood.search(line):
                run.append(line)
                continue
            flush()
            folded.append(line)
        flush()
        return "\n".join(folded[-lines:])


# ---------------------------------------------------------------------------------------------
# Admin clients


class Admin:
    """A QMPClient with every event it has received kept in order."""

    def __init__(self, name):
        self.name = name
        self.qmp = QMPClient(name)
        self.listener = EventListener()
        self.qmp.register_listener(self.listener)
        self.events = []

    async def connect(self, path):
        await asyncio.wait_for(self.qmp.connect(path), 10)
        return self

    async def disconnect(self):
        await self.qmp.disconnect()

    async def run(self, command, arguments=None):
        return await asyncio.wait_for(self.qmp.execute(command, arguments), 15)

    async def fails(self, command, arguments=None):
        """Runs a command that must fail; returns (class, desc), or (None, reply) when it succeeded."""
        try:
            reply = await self.run(command, arguments)
        except ExecuteError as error:
            return error.error_class, error.error.error.desc
        return None, reply

    def mark(self):
        self.events += self.listener.clear()
        return len(self.events)

    def events_since(self, mark, name=None, where=lambda data: True):
        self.events += self.listener.clear()
        return [
            event for event in self.events[mark:]
            if (name is None or event["event"] == name) and where(event.get("data", {}))
        ]

    async def event(self, name, where=lambda data: True, since=0, timeout=10):
        found = await eventually(
            f"event {name}", lambda: self.events_since(since, name, where), timeout=timeout)
        return found[0]


class RawQMP:
    """A QMP connection over a plain socket, for what QMPClient does for its user."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buffer = b""
        self.raw = []  # every message as received, terminator included

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def message(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unparsed bytes {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.raw.append(line + b"\n")
        return json.loads(line)

    def reply(self):
        """The next message that is not an event."""
        while True:
            message = self.message()
            if "event" not in message:
                return message

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Tenants


class VfioUserTenant:
    """Enough of the tenant protocol (docs/PROTOCOL.md) for several mappings in one session."""

    VERSION, DMA_MAP, ATTACH_GROUP = 1, 2, 0x1001

    def __init__(self, path=None, sock=None):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(path)
        sock.settimeout(10)
        self.sock = sock
        self.next_id = 0

    def request(self, command, payload, fds=()):
        self.next_id += 1
        message = struct.pack("<HHIII", self.next_id, command, 16 + len(payload), 0, 0) + payload
        if fds:
            self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.sock.sendall(message)
        header = self._read(16)
        msg_id, reply_command, size, flags, error = struct.unpack("<HHIII", header)
        payload = self._read(size - 16)
        if msg_id != self.next_id or reply_command != command or flags & 0xF != 1:
            raise RuntimeError(f"reply {header!r} does not answer command {command} id {self.next_id}")
        detail = payload.split(b"\0", 1)[0].decode(errors="replace")
        return (error if flags & 0x20 else 0), payload, detail

    def _read(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError("the daemon closed the tenant connection")
            data += chunk
        return data

    def version(self):
        capabilities = b'{"capabilities":{"x-iommu-policyd":{"error_detail":true}}}\0'
        error, payload, _ = self.request(self.VERSION, struct.pack("<HH", 0, 1) + capabilities)
        if error:
            raise RuntimeError(f"VERSION refused with errno {error}")
        return payload

    def attach(self, group):
        return self.request(self.ATTACH_GROUP, struct.pack("<IIII", 16, 0, group, 0))[0]

    def map(self, iova, size, flags=3, memory=None):
        payload = struct.pack("<IIQQQ", 32, flags, 0, iova, size)
        error, _, detail = self.request(self.DMA_MAP, payload, fds=[memory] if memory is not None else ())
        return error, detail

    def close(self):
        self.sock.close()


class Ledger:
    """What the test did to the daemon since it last started, for the counters."""

    def __init__(self):
        self.sessions = 0
        self.attach_allowed = 0
        self.map_allowed = 0
        self.map_denied = 0
        self.revocations = 0
        self.reloads_ok = 0
        self.reloads_failed = 0


class Context:
    def __init__(self, args, directory):
        self.args = args
        self.dir = directory
        self.ctl = args.ctl
        self.daemon = Daemon(args.daemon, directory, ["--profile", "x86-intel", "--profile-groups", str(GROUPS)])
        self.ledger = Ledger()
        self.children = []
        self.admin = None
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.tenant_rule_line = {}  # uid -> line of its [[tenant]] header
        self.root = os.geteuid() == 0
        self.extra_policy = ""

    def policy_text(self, extra=None, nobody=True):
        """The policy file: `extra` is appended (default: what the reload test added), and
        without `nobody` there is no rule for uid 65534."""
        extra = self.extra_policy if extra is None else extra
        lines = [
            "# iommu-policyd admin integration test",
            "[defaults]",
            "max_mappings = 64",
            'max_bytes = "1G"',
            "",
            "[admin]",
            # Root needs no entry; a non-root test lists itself. 65534 is never listed.
            f"uids = [{self.uid if self.uid != 0 else 4242}]",
            "",
        ]
        for uid, groups in ((self.uid, None), (NOBODY, [1])) if nobody else ((self.uid, None),):
            self.tenant_rule_line[uid] = len(lines) + 1
            lines += ["[[tenant]]", f"uid = {uid}"]
            if groups is not None:
                lines.append(f"groups = {groups}")
            lines.append("")
        return "\n".join(lines) + "\n" + extra

    def write_policy(self, text):
        path = self.daemon.policy
        with open(path + ".new", "w") as file:
            file.write(text)
        os.chmod(path + ".new", 0o644)
        os.replace(path + ".new", path)

    def rule(self, uid):
        return f"{self.daemon.policy}:{self.tenant_rule_line[uid]}"

    async def run_ctl(self, *arguments, as_nobody=False, ctl=None, timeout=30):
        command = [ctl or self.ctl, "--socket", self.daemon.tenant_socket, *arguments]
        if as_nobody:
            command = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"] + command
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.children.append(process)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    async def holder(self, group, iova, size=0x1000, hold=30):
        """`iommu-policyctl map --hold` in the background; returns (process, its tenant entry)."""
        process = await asyncio.create_subprocess_exec(
            self.ctl, "map", "--socket", self.daemon.tenant_socket, "--group", str(group), "--iova", hex(iova),
            "--size", hex(size), "--memfd", "--hold", str(hold),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.children.append(process)
        self.ledger.sessions += 1
        self.ledger.attach_allowed += 1
        self.ledger.map_allowed += 1

        async def mapped():
            if process.returncode is not None:
                raise RuntimeError(f"iommu-policyctl exited with {process.returncode}: {await process.stderr.read()}")
            tenants = await self.admin.run("query-tenants")
            return next((t for t in tenants if t["pid"] == process.pid and t["mappings"] == 1), None)

        return process, await eventually(f"holder pid {process.pid} to map {iova:#x}", mapped)

    async def end_children(self):
        for process in self.children:
            await self.end(process)

    async def end(self, process):
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
        await process.wait()


# ---------------------------------------------------------------------------------------------
# 1. Negotiation


async def negotiation(ctx):
    admin = ctx.admin
    greeting = admin.qmp.greeting  # qemu.qmp's Greeting model, which has checked the QMP structure
    version = greeting.QMP.version
    triple = version["qemu"]
    R.check("greeting: version.qemu is a triple of integers",
            set(triple) == {"major", "minor", "micro"} and all(isinstance(triple[k], int) for k in triple),
            f"{triple!r}")
    expected_package = f"iommu-policyd {triple['major']}.{triple['minor']}.{triple['micro']}"
    R.equal("greeting: package is 'iommu-policyd <version>'", version["package"], expected_package)
    R.equal("greeting: capabilities", list(greeting.QMP.capabilities), [])
    R.equal("query-version equals the greeting's version", await admin.run("query-version"),
            {"qemu": triple, "package": expected_package})

    raw = RawQMP(ctx.daemon.admin_socket)
    try:
        first = raw.message()
        R.check("raw: the greeting comes first", "QMP" in first, f"{first!r}")
        raw.send('{"execute": "query-version", "id": "too-early"}')
        early = raw.reply()
        R.equal("a command before qmp_capabilities gets CommandNotFound",
                early.get("error", {}).get("class"), "CommandNotFound")
        R.equal("... with its id echoed", early.get("id"), "too-early")
        raw.send('{"execute": "no-such-command", "id": 5}')
        R.equal("an unknown command before qmp_capabilities gets CommandNotFound",
                raw.reply().get("error", {}).get("class"), "CommandNotFound")
        raw.send('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 6}')
        oob = raw.reply()
        R.check("qmp_capabilities enabling a capability the greeting did not offer is refused",
                oob.get("error", {}).get("desc") == "Capability 'oob' not available" and oob.get("id") == 6,
                f"{oob!r}")
        raw.send('{"execute": "qmp_capabilities", "id": 7}')
        R.equal("qmp_capabilities returns {} with its id", raw.reply(), {"return": {}, "id": 7})
        raw.send('{"execute": "qmp_capabilities", "id": 8}')
        again = raw.reply()
        R.check("qmp_capabilities a second time is an error", "error" in again, f"{again!r}")

        for request_id in ["abc", 42, {"nested": [1, 2.5, None, True]}, [1, "two"], 18446744073709551615]:
            raw.send(json.dumps({"execute": "query-version", "id": request_id}))
            reply = raw.reply()
            R.check(f"id {json.dumps(request_id)} is echoed", "return" in reply and reply.get("id") == request_id,
                    f"{reply!r}")
        raw.send('{"execute": "query-version"}')
        R.check("a request without id gets a reply without id", "id" not in raw.reply())
        raw.send('{"execute": "no-such-command", "id": "unknown"}')
        unknown = raw.reply()
        R.check("an unknown command gets CommandNotFound with the id echoed",
                unknown.get("error", {}).get("class") == "CommandNotFound" and unknown.get("id") == "unknown",
                f"{unknown!r}")

        raw.send('{"execute": ')
        raw.send('garbage}\r\n')
        bad = raw.reply()
        R.equal("malformed JSON gets a GenericError", bad.get("error", {}).get("class"), "GenericError")
        raw.send('{"execute": "query-version", "id": "after-garbage"}')
        after = raw.reply()
        R.check("... and the connection stays usable", "return" in after and after.get("id") == "after-garbage",
                f"{after!r}")

        raw.send('{"execute":"query-version","id":1}{"execute":"query-commands","id":2}')
        one, two = raw.reply(), raw.reply()
        R.check("two commands with no newline between them are both answered, in order",
                one.get("id") == 1 and "qemu" in one.get("return", {}) and two.get("id") == 2
                and isinstance(two.get("return"), list), f"{one!r} {two!r}")
        raw.send(' \r\n\t {"execute": "query-version", "id": "ws"} ')
        R.equal("whitespace around a command is skipped", raw.reply().get("id"), "ws")
        for byte in b'{"execute": "query-version", "id": "split"}':
            raw.send(bytes([byte]))
        R.equal("a command sent a byte at a time is answered", raw.reply().get("id"), "split")
        big_id = "x" * 900_000
        raw.send(json.dumps({"execute": "query-version", "id": big_id}))
        R.equal("a value under 1 MiB (900 kB id) is accepted and echoed", raw.reply().get("id"), big_id)
        too_big = json.dumps({"execute": "query-version", "id": "y" * (1 << 20)})
        raw.send(too_big)
        rejected = raw.reply()
        R.equal("a value over 1 MiB gets a GenericError", rejected.get("error", {}).get("class"), "GenericError")
        desc = rejected.get("error", {}).get("desc", "")
        R.check("... whose desc says so once", desc.count("JSON parse error") == 1 and "1048576" in desc, f"{desc!r}")
        raw.send('{"execute": "query-version", "id": "after-big"}')
        R.equal("... and the connection stays usable", raw.reply().get("id"), "after-big")
        unterminated = [m[-12:] for m in raw.raw if not m.endswith(b"\r\n")]
        R.check("every message ends in CRLF", raw.raw and not unterminated, f"{unterminated!r}")
    finally:
        raw.close()


async def no_events_before_negotiation(ctx):
    admin = ctx.admin
    mode = stat.S_IMODE(os.stat(ctx.daemon.admin_socket).st_mode)
    R.equal("--admin-socket-mode 0666 gives the socket mode 0666", oct(mode), oct(0o666))
    raw = RawQMP(ctx.daemon.admin_socket)
    try:
        raw.message()
        mark = admin.mark()
        added = await admin.run("add-reserved-region", {"first": 0x9000_0000, "size": 0x1000})
        await admin.run("remove-reserved-region", {"id": added["id"]})
        await admin.event("REGIONS_CHANGED", since=mark)
        raw.send('{"execute": "query-version", "id": "unnegotiated"}')
        R.check("a connection that has not negotiated gets no events", "event" not in raw.message())
    finally:
        raw.close()


# ---------------------------------------------------------------------------------------------
# 2a. Persistent run-time regions across a restart


async def persistence(ctx):
    admin = ctx.admin
    state_file = os.path.join(ctx.daemon.state, "runtime-regions.json")
    first, size = 0x7000_0000, 0x10_0000
    mark = admin.mark()
    added = await admin.run("add-reserved-region", {
        "first": hex(first), "size": size, "kind": "reserved", "comment": "persist test", "persist": True})
    R.check("add-reserved-region persist:true returns {id, revoked: 0}",
            set(added) == {"id", "revoked"} and isinstance(added["id"], int) and added["revoked"] == 0, f"{added!r}")
    changed = await admin.event("REGIONS_CHANGED", since=mark)
    R.check("REGIONS_CHANGED has cause and regions",
            isinstance(changed["data"].get("cause"), str) and isinstance(changed["data"].get("regions"), int),
            f"{changed!r}")
    try:
        with open(state_file) as file:
            persisted = json.load(file)
        R.check("runtime-regions.json holds the region", mentions(persisted, first), f"{persisted!r}")
    except (OSError, ValueError) as error:
        R.check("runtime-regions.json holds the region", False, repr(error))
    platform = await admin.run("query-platform")
    runtime = [r for r in platform["runtime-regions"] if r.get("id") == added["id"]]
    R.check("query-platform lists it as a persistent runtime region",
            len(runtime) == 1 and runtime[0].get("persistent") is True and runtime[0].get("first") == first
            and runtime[0].get("last") == first + size - 1, f"{platform['runtime-regions']!r}")

    # A persistent region does not belong to the connection that added it.
    await admin.disconnect()
    ctx.admin = admin = await Admin("main").connect(ctx.daemon.admin_socket)
    regions = await admin.run("query-reserved-regions")
    R.check("the persistent region outlives its admin connection",
            any(r["first"] == first and r["last"] == first + size - 1 for r in regions), f"{regions!r}")

    await admin.disconnect()
    status = ctx.daemon.stop()
    R.equal("SIGTERM stops the daemon with status 0", status, 0)
    ctx.ledger = Ledger()
    restarted = time.time()
    await ctx.daemon.start()
    await eventually("the metrics textfile of the new daemon",
                     lambda: os.path.exists(ctx.daemon.metrics) and os.stat(ctx.daemon.metrics).st_mtime >= restarted - 1,
                     timeout=5)
    R.check("the metrics textfile is written at start", True)
    ctx.admin = admin = await Admin("main").connect(ctx.daemon.admin_socket)
    regions = await admin.run("query-reserved-regions")
    survived = [r for r in regions if r["first"] == first and r["last"] == first + size - 1]
    R.check("after a restart the persisted region applies again",
            len(survived) == 1 and survived[0]["kind"] == "reserved", f"{regions!r}")
    runtime = [r for r in (await admin.run("query-platform"))["runtime-regions"] if r.get("first") == first]
    R.check("... and query-platform lists it as persistent", len(runtime) == 1 and runtime[0]["persistent"] is True,
            f"{runtime!r}")
    decision = await admin.run("explain-map", {"group": 0, "iova": first + 0x1000, "size": 0x1000})
    R.check("... and explain-map denies a map inside it",
            decision["decision"] == "deny" and (decision["conflict"] or {}).get("kind") == "reserved", f"{decision!r}")
    if runtime:
        R.equal("remove-reserved-region returns {}", await admin.run("remove-reserved-region", {"id": runtime[0]["id"]}),
                {})
        regions = await admin.run("query-reserved-regions")
        R.check("... the region is gone", not any(r["first"] == first for r in regions), f"{regions!r}")
        with open(state_file) as file:
            persisted = json.load(file)
        R.check("... and runtime-regions.json no longer holds it", not mentions(persisted, first), f"{persisted!r}")
        error_class, desc = await admin.fails("remove-reserved-region", {"id": runtime[0]["id"]})
        R.equal("removing it again is a GenericError", error_class, "GenericError")


# ---------------------------------------------------------------------------------------------
# 2b. Every command


async def commands(ctx):
    admin = ctx.admin
    names = [entry["name"] for entry in await admin.run("query-commands")]
    R.equal("query-commands lists exactly the documented commands", set(names), DOCUMENTED_COMMANDS)
    R.equal("query-commands lists each once", len(names), len(set(names)))

    platform = await admin.run("query-platform")
    R.check("query-platform has the documented keys",
            {"sources", "diagnostics", "groups", "reloads", "runtime-regions"} <= set(platform), f"{platform!r}")
    R.check("query-platform sources are strings",
            platform["sources"] and all(isinstance(s, str) for s in platform["sources"]), f"{platform['sources']!r}")
    R.check("query-platform diagnostics have severity, file, message",
            all({"severity", "file", "message"} <= set(d) for d in platform["diagnostics"]),
            f"{platform['diagnostics']!r}")
    groups = platform["groups"]
    R.equal("query-platform lists the profile's groups", [g["id"] for g in groups], list(range(GROUPS)))
    R.check("query-platform groups: aperture, aperture-source, page-sizes, devices",
            all(g["aperture"] == {"first": 0, "last": APERTURE_LAST} and isinstance(g["aperture-source"], str)
                and g["page-sizes"] == PAGE_SIZES and isinstance(g["devices"], list) for g in groups), f"{groups!r}")
    R.check("query-platform reloads is an integer", isinstance(platform["reloads"], int))
    R.equal("query-platform runtime-regions is empty", platform["runtime-regions"], [])

    regions = await admin.run("query-reserved-regions")
    baseline_regions = regions
    msi = [r for r in regions if r["kind"] == "msi"]
    R.check("query-reserved-regions has the MSI window 0xfee00000-0xfeefffff, kind msi, for every group",
            len(msi) == 1 and msi[0]["first"] == MSI_FIRST and msi[0]["last"] == MSI_LAST and "group" not in msi[0]
            and isinstance(msi[0]["source"], str), f"{regions!r}")
    R.check("query-reserved-regions: kind, first, last, source on each; known kinds",
            all({"kind", "first", "last", "source"} <= set(r) and r["kind"] in REGION_KINDS for r in regions),
            f"{regions!r}")
    R.check("query-reserved-regions is ordered by address",
            [r["first"] for r in regions] == sorted(r["first"] for r in regions), f"{[r['first'] for r in regions]}")
    group0 = await admin.run("query-reserved-regions", {"group": 0})
    R.check("query-reserved-regions group 0 has the MSI window and what lies outside the aperture",
            any(r["kind"] == "msi" for r in group0)
            and any(r["kind"] == "outside-aperture" and r["first"] == APERTURE_LAST + 1 for r in group0),
            f"{group0!r}")
    error_class, _ = await admin.fails("query-reserved-regions", {"group": 99})
    R.equal("query-reserved-regions of a group that does not exist is a GenericError", error_class, "GenericError")

    usable = await admin.run("query-usable-ranges", {"groups": [0]})
    R.check("query-usable-ranges group 0 excludes the MSI window",
            all(r["last"] < MSI_FIRST or r["first"] > MSI_LAST for r in usable), f"{usable!r}")
    R.equal("query-usable-ranges group 0 is the aperture minus the MSI window", usable,
            [{"first": 0, "last": MSI_FIRST - 1}, {"first": MSI_LAST + 1, "last": APERTURE_LAST}])
    R.equal("query-usable-ranges of groups 0 and 1 with relaxable allow",
            await admin.run("query-usable-ranges", {"groups": [0, 1], "relaxable": "allow"}), usable)
    error_class, _ = await admin.fails("query-usable-ranges", {"groups": [0], "relaxable": "sometimes"})
    R.equal("query-usable-ranges with a bad relaxable is a GenericError", error_class, "GenericError")
    error_class, _ = await admin.fails("query-usable-ranges", {})
    R.equal("query-usable-ranges without groups is a GenericError", error_class, "GenericError")

    R.equal("query-tenants with no tenant", await admin.run("query-tenants"), [])
    R.equal("query-mappings with no tenant", await admin.run("query-mappings"), {"total": 0, "mappings": []})

    # A tenant from `iommu-policyctl map --hold`, in the background.
    mark = admin.mark()
    before = int(time.time())
    holder, entry = await ctx.holder(group=0, iova=0x4000_0000)
    connected = await admin.event("TENANT_CONNECTED", lambda d: d.get("pid") == holder.pid, since=mark)
    R.check("TENANT_CONNECTED has session, uid, gid, pid, rule",
            {"session", "uid", "gid", "pid", "rule"} <= set(connected["data"]), f"{connected!r}")
    R.equal("query-tenants shows the holder's session with its pid",
            {k: entry[k] for k in ("session", "pid", "uid", "gid", "groups", "mappings", "bytes")},
            {"session": connected["data"]["session"], "pid": holder.pid, "uid": ctx.uid, "gid": ctx.gid,
             "groups": [0], "mappings": 1, "bytes": 0x1000})
    R.equal("query-tenants rule names the [[tenant]] rule that admitted it", entry["rule"], ctx.rule(ctx.uid))
    R.check("query-tenants connected-at is seconds since the epoch",
            isinstance(entry["connected-at"], int) and before - 2 <= entry["connected-at"] <= time.time() + 2,
            f"{entry['connected-at']!r}, test started it at {before}")
    R.check("the event's timestamp has seconds and microseconds",
            abs(connected["timestamp"]["seconds"] - time.time()) < 30
            and 0 <= connected["timestamp"]["microseconds"] < 1_000_000, f"{connected['timestamp']!r}")
    holder_session = entry["session"]

    # A tenant with several mappings in one session: the test's own vfio-user client.
    tenant = VfioUserTenant(ctx.daemon.tenant_socket)
    ctx.ledger.sessions += 1
    tenant.version()
    R.equal("raw tenant attaches group 1", tenant.attach(1), 0)
    ctx.ledger.attach_allowed += 1
    for iova, flags in ((0x30_0000, 3), (0x10_0000, 3), (0x20_0000, 3), (0x40_0000, 1)):
        error, detail = tenant.map(iova, 0x1000, flags)
        R.check(f"raw tenant maps {iova:#x}", error == 0, f"errno {error}: {detail}")
        ctx.ledger.map_allowed += 1
    tenants = await admin.run("query-tenants")
    mine = [t for t in tenants if t["pid"] == os.getpid()]
    R.check("query-tenants shows the raw tenant (pid of this script, group 1, 4 mappings)",
            len(mine) == 1 and mine[0]["groups"] == [1] and mine[0]["mappings"] == 4 and mine[0]["bytes"] == 0x4000,
            f"{tenants!r}")
    session = mine[0]["session"] if mine else -1

    everything = await admin.run("query-mappings")
    R.equal("query-mappings total counts every session's mappings", everything["total"], 5)
    R.check("query-mappings entries: session, iova, size, flags, backed",
            all(set(m) == {"session", "iova", "size", "flags", "backed"} for m in everything["mappings"]),
            f"{everything!r}")
    holder_mappings = [m for m in everything["mappings"] if m["session"] == holder_session]
    R.equal("the holder's memfd mapping", holder_mappings,
            [{"session": holder_session, "iova": 0x4000_0000, "size": 0x1000, "flags": "rw", "backed": True}])
    own = await admin.run("query-mappings", {"tenant": session})
    R.equal("query-mappings tenant: in address order, flags, unbacked", own, {"total": 4, "mappings": [
        {"session": session, "iova": iova, "size": 0x1000, "flags": flags, "backed": False}
        for iova, flags in ((0x10_0000, "rw"), (0x20_0000, "rw"), (0x30_0000, "rw"), (0x40_0000, "r"))]})
    first_page = await admin.run("query-mappings", {"tenant": session, "limit": 2})
    second_page = await admin.run("query-mappings", {"tenant": session, "limit": 2, "offset": 2})
    R.equal("query-mappings tenant limit 2", first_page, {"total": 4, "mappings": own["mappings"][:2]})
    R.equal("query-mappings tenant limit 2 offset 2", second_page, {"total": 4, "mappings": own["mappings"][2:]})
    R.equal("query-mappings offset past the end", await admin.run("query-mappings", {"tenant": session, "offset": 4}),
            {"total": 4, "mappings": []})
    R.equal("query-mappings limit 0", await admin.run("query-mappings", {"tenant": session, "limit": 0}),
            {"total": 4, "mappings": []})
    R.equal("query-mappings group 1 is the session holding it", await admin.run("query-mappings", {"group": 1}), own)
    R.equal("query-mappings group 0", await admin.run("query-mappings", {"group": 0}),
            {"total": 1, "mappings": holder_mappings})
    R.equal("query-mappings group 2 (no holder)", await admin.run("query-mappings", {"group": 2}),
            {"total": 0, "mappings": []})
    pages, totals = [], set()
    for offset in range(0, 6, 2):
        page = await admin.run("query-mappings", {"limit": 2, "offset": offset})
        pages += page["mappings"]
        totals.add(page["total"])
    R.check("paging every session's mappings with limit 2 yields each once",
            pages == everything["mappings"] and totals == {5}, f"{pages!r} totals {totals}")
    for arguments, what in (({"tenant": session, "group": 1}, "tenant and group together"),
                            ({"tenant": 999999}, "an unknown tenant"),
                            ({"limit": 100001}, "a limit above 100000"),
                            ({"offset": -1}, "a negative offset")):
        error_class, _ = await admin.fails("query-mappings", arguments)
        R.equal(f"query-mappings with {what} is a GenericError", error_class, "GenericError")
    R.equal("query-mappings limit 100000 is accepted",
            (await admin.run("query-mappings", {"limit": 100000}))["total"], 5)

    # explain-map
    allowed = await admin.run("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0x1000})
    R.equal("explain-map allow", allowed, {"decision": "allow", "errno": 0, "reason": allowed.get("reason"),
                                           "conflict": None})
    R.check("explain-map allow has a reason string", isinstance(allowed.get("reason"), str))
    denied = await admin.run("explain-map", {"group": 0, "iova": "0xfee0_0000", "size": "0x1000", "flags": "rw"})
    R.check("explain-map in the MSI window (hex strings) is denied, errno 22, conflict msi",
            denied["decision"] == "deny" and denied["errno"] == EINVAL and isinstance(denied["reason"], str)
            and denied["conflict"] is not None
            and {k: denied["conflict"].get(k) for k in ("kind", "first", "last")}
            == {"kind": "msi", "first": MSI_FIRST, "last": MSI_LAST}
            and isinstance(denied["conflict"].get("source"), str), f"{denied!r}")
    outside = await admin.run("explain-map", {"group": 0, "iova": APERTURE_LAST + 1, "size": 0x1000})
    R.check("explain-map beyond the aperture is denied (outside-aperture)",
            outside["decision"] == "deny" and (outside["conflict"] or {}).get("kind") == "outside-aperture",
            f"{outside!r}")
    decimal = await admin.run("explain-map", {"group": 0, "iova": str(MSI_FIRST), "size": "4096"})
    R.equal("explain-map takes decimal strings", (decimal or {}).get("conflict", {}).get("kind"), "msi")
    top = await admin.run("explain-map", {"group": 0, "iova": (1 << 64) - 0x1000, "size": 0x1000})
    R.check("explain-map takes integers up to 2^64-1 (the last page: outside the aperture)",
            top["decision"] == "deny" and (top["conflict"] or {}).get("kind") == "outside-aperture"
            and (top["conflict"] or {}).get("last") == (1 << 64) - 1, f"{top!r}")
    wraps = await admin.run("explain-map", {"group": 0, "iova": "0xffff_ffff_ffff_f000", "size": 0x2000})
    R.check("explain-map of a range that wraps past 2^64 is EOVERFLOW (75)",
            wraps["decision"] == "deny" and wraps["errno"] == 75, f"{wraps!r}")
    empty = await admin.run("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0})
    R.check("explain-map of size 0 is EINVAL", empty["decision"] == "deny" and empty["errno"] == EINVAL, f"{empty!r}")
    error_class, _ = await admin.fails("explain-map", {"group": 0, "iova": 1 << 64, "size": 0x1000})
    R.equal("explain-map with an iova of 2^64 is a GenericError", error_class, "GenericError")
    read_only = await admin.run("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0x1000, "flags": "r"})
    R.equal("explain-map flags r", read_only["decision"], "allow")
    no_access = await admin.run("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0x1000, "flags": 0})
    R.check("explain-map flags 0 (neither READ nor WRITE) is EINVAL",
            no_access["decision"] == "deny" and no_access["errno"] == EINVAL, f"{no_access!r}")
    as_nobody = await admin.run("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0x1000, "uid": NOBODY})
    R.check("explain-map uid 65534 on group 0 (its rule allows only group 1) is EPERM",
            as_nobody["decision"] == "deny" and as_nobody["errno"] == EPERM, f"{as_nobody!r}")
    R.equal("explain-map uid 65534 on group 1",
            (await admin.run("explain-map", {"group": 1, "iova": 0x8000_0000, "size": 0x1000, "uid": NOBODY}))
            ["decision"], "allow")
    error_class, _ = await admin.fails("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0x1000, "uid": 12345})
    R.equal("explain-map for a uid no rule matches is a GenericError", error_class, "GenericError")
    error_class, _ = await admin.fails("explain-map", {"group": 0, "iova": 0x8000_0000, "size": 0x1000,
                                                       "bogus": 1})
    R.equal("an unknown argument is a GenericError", error_class, "GenericError")

    # add-reserved-region / remove-reserved-region (connection-scoped)
    mark = admin.mark()
    added = await admin.run("add-reserved-region", {"first": 0x20_0000, "last": 0x20_0FFF, "comment": "revoke one"})
    ctx.ledger.revocations += 1
    R.equal("add-reserved-region over one mapping revokes it", added.get("revoked"), 1)
    revoked = await admin.event("MAPPING_REVOKED", lambda d: as_int(d.get("session-id")) == session, since=mark)
    data = revoked["data"]
    R.check("MAPPING_REVOKED has the audit fields and revoke-cause",
            set(DENIAL_FIELDS) - {"region-kind", "region-source"} <= set(data) and "revoke-cause" in data,
            f"missing {sorted(set(DENIAL_FIELDS + ['revoke-cause']) - set(data))} in {data!r}")
    R.check("MAPPING_REVOKED names the mapping (iova 0x200000, size 0x1000)",
            as_int(data.get("dma-iova")) == 0x20_0000 and as_int(data.get("dma-size")) == 0x1000, f"{data!r}")
    await admin.event("REGIONS_CHANGED", since=mark)
    record = await eventually(
        "the revocation's audit record",
        lambda: [line for line in ctx.daemon.log().splitlines()
                 if "audit.event=mapping-revoked" in line and "dma.iova=0x200000" in line])
    R.check("... and an audit record (mapping-revoked)", len(record) == 1, f"{record!r}")
    own_now = await admin.run("query-mappings", {"tenant": session})
    R.equal("the other mappings of the session stay", [m["iova"] for m in own_now["mappings"]],
            [0x10_0000, 0x30_0000, 0x40_0000])
    error, detail = tenant.map(0x20_0000, 0x1000)
    ctx.ledger.map_denied += 1
    R.check("the tenant can no longer map the region", error == EINVAL and "reserved" in detail,
            f"errno {error}: {detail}")
    sized = await admin.run("add-reserved-region", {"first": 0x50_0000, "size": 0x1000, "kind": "peer-mmio",
                                                    "group": 1, "comment": "sized"})
    R.equal("add-reserved-region with size and group, over nothing", sized.get("revoked"), 0)
    in_group1 = [r for r in await admin.run("query-reserved-regions", {"group": 1}) if r["first"] == 0x50_0000]
    in_group0 = [r for r in await admin.run("query-reserved-regions", {"group": 0}) if r["first"] == 0x50_0000]
    R.check("the group region applies to group 1 only",
            len(in_group1) == 1 and in_group1[0]["last"] == 0x50_0FFF and in_group1[0]["kind"] == "peer-mmio"
            and in_group1[0].get("group") == 1 and not in_group0, f"{in_group1!r} {in_group0!r}")
    runtime = (await admin.run("query-platform"))["runtime-regions"]
    R.check("query-platform lists both runtime regions, not persistent",
            sorted(r["id"] for r in runtime) == sorted([added["id"], sized["id"]])
            and all(r["persistent"] is False and {"id", "kind", "first", "last", "source"} <= set(r) for r in runtime),
            f"{runtime!r}")
    for arguments, what in (({"first": 0x1000, "last": 0x1fff, "size": 0x1000}, "both last and size"),
                            ({"first": 0x1000}, "neither last nor size"),
                            ({"first": 0x2000, "last": 0x1000}, "last below first"),
                            ({"first": 0x1000, "size": 0x1000, "kind": "outside-aperture"}, "kind outside-aperture"),
                            ({"first": 0x1000, "size": 0x1000, "kind": "bogus"}, "an unknown kind")):
        error_class, _ = await admin.fails("add-reserved-region", arguments)
        R.equal(f"add-reserved-region with {what} is a GenericError", error_class, "GenericError")
    for region in (added, sized):
        R.equal(f"remove-reserved-region {region['id']}", await admin.run("remove-reserved-region",
                                                                         {"id": region["id"]}), {})
    R.equal("query-reserved-regions is back as it was", await admin.run("query-reserved-regions"), baseline_regions)

    # A region without persist belongs to its connection; events reach every connection.
    other = await Admin("other").connect(ctx.daemon.admin_socket)
    mark = admin.mark()
    scoped = await other.run("add-reserved-region", {"first": 0x60_0000, "size": 0x1000})
    await admin.event("REGIONS_CHANGED", since=mark)
    R.check("another connection's region is visible (and its REGIONS_CHANGED reached this connection)",
            any(r["first"] == 0x60_0000 for r in await admin.run("query-reserved-regions")))
    await other.disconnect()
    gone = await eventually(
        "the closed connection's region to go",
        lambda: _absent(admin, 0x60_0000), timeout=10)
    R.check(f"a region without persist goes when its connection closes (id {scoped.get('id')})", gone)

    # revoke-tenant ends the held iommu-policyctl session.
    mark = admin.mark()
    result = await admin.run("revoke-tenant", {"session": holder_session, "reason": "admin test"})
    ctx.ledger.revocations += 1
    R.equal("revoke-tenant returns the number of mappings revoked", result, {"revoked": 1})
    gone = await admin.event("TENANT_DISCONNECTED", lambda d: d.get("session") == holder_session, since=mark)
    R.check("TENANT_DISCONNECTED: session, uid, pid, mappings, bytes, reason",
            {"session", "uid", "pid", "mappings", "bytes", "reason"} <= set(gone["data"])
            and gone["data"]["pid"] == holder.pid, f"{gone!r}")
    R.check("... whose reason carries revoke-tenant's reason", "admin test" in str(gone["data"].get("reason")),
            f"{gone['data'].get('reason')!r}")
    revoked = await admin.event("MAPPING_REVOKED", lambda d: as_int(d.get("session-id")) == holder_session, since=mark)
    R.check("revoke-tenant's MAPPING_REVOKED names the holder's mapping",
            as_int(revoked["data"].get("dma-iova")) == 0x4000_0000, f"{revoked!r}")
    R.check("the revoked session is gone from query-tenants",
            all(t["session"] != holder_session for t in await admin.run("query-tenants")))
    R.check("its mapping is gone from query-mappings",
            all(m["session"] != holder_session for m in (await admin.run("query-mappings"))["mappings"]))
    R.equal("query-mappings of the revoked session is a GenericError",
            (await admin.fails("query-mappings", {"tenant": holder_session}))[0], "GenericError")
    if holder.returncode is None:
        R.note("the revoked iommu-policyctl sleeps on through its --hold; a tenant that reads sees EOF (below)")
    await ctx.end(holder)
    error_class, _ = await admin.fails("revoke-tenant", {"session": holder_session})
    R.equal("revoke-tenant of a session that is gone is a GenericError", error_class, "GenericError")

    # A tenant that reads sees its connection closed by revoke-tenant.
    revoked_tenant = VfioUserTenant(ctx.daemon.tenant_socket)
    ctx.ledger.sessions += 1
    revoked_tenant.version()
    R.equal("a second raw tenant attaches group 2", revoked_tenant.attach(2), 0)
    ctx.ledger.attach_allowed += 1
    R.equal("... and maps 0x800000", revoked_tenant.map(0x80_0000, 0x1000), (0, ""))
    ctx.ledger.map_allowed += 1
    entry = [t for t in await admin.run("query-tenants") if t["groups"] == [2]]
    R.check("... seen in query-tenants", len(entry) == 1, f"{entry!r}")
    if entry:
        mark = admin.mark()
        R.equal("revoke-tenant of the raw tenant", await admin.run("revoke-tenant", {"session": entry[0]["session"]}),
                {"revoked": 1})
        ctx.ledger.revocations += 1
        gone = await admin.event("TENANT_DISCONNECTED", lambda d: d.get("session") == entry[0]["session"], since=mark)
        R.check("its TENANT_DISCONNECTED gives a reason naming this admin connection when none was given",
                isinstance(gone["data"].get("reason"), str) and gone["data"]["reason"], f"{gone!r}")
        try:
            eof = revoked_tenant.sock.recv(16) == b""
        except OSError as error:
            eof = repr(error)
        R.check("revoke-tenant closes the tenant's connection (it reads EOF)", eof is True, f"{eof!r}")
    revoked_tenant.close()

    # reload with an unchanged policy
    reloads = (await admin.run("query-platform"))["reloads"]
    mark = admin.mark()
    reloaded = await admin.run("reload")
    ctx.ledger.reloads_ok += 1
    R.check("reload with an unchanged policy revokes nothing",
            set(reloaded) == {"revoked", "sessions-ended", "diagnostics"} and reloaded["revoked"] == 0
            and reloaded["sessions-ended"] == 0 and isinstance(reloaded["diagnostics"], list), f"{reloaded!r}")
    event = await admin.event("POLICY_RELOADED", since=mark)
    R.check("POLICY_RELOADED: trigger, revoked, sessions-ended, diagnostics",
            isinstance(event["data"].get("trigger"), str) and event["data"].get("revoked") == 0
            and event["data"].get("sessions-ended") == 0 and "diagnostics" in event["data"], f"{event!r}")
    R.check("POLICY_RELOADED diagnostics is a list of strings, as in reload's reply",
            event["data"].get("diagnostics") == reloaded["diagnostics"],
            f"event has diagnostics {event['data'].get('diagnostics')!r}, the reply {reloaded['diagnostics']!r}")
    R.equal("query-platform reloads counts it", (await admin.run("query-platform"))["reloads"], reloads + 1)
    mark = admin.mark()
    ctx.daemon.process.send_signal(signal.SIGHUP)
    ctx.ledger.reloads_ok += 1
    event = await admin.event("POLICY_RELOADED", since=mark)
    R.check("SIGHUP reloads as the reload command does (POLICY_RELOADED)",
            isinstance(event["data"].get("trigger"), str) and event["data"].get("revoked") == 0, f"{event!r}")
    R.equal("query-platform reloads counts it too", (await admin.run("query-platform"))["reloads"], reloads + 2)
    R.equal("the raw tenant's mappings survive the reload",
            [m["iova"] for m in (await admin.run("query-mappings", {"tenant": session}))["mappings"]],
            [0x10_0000, 0x30_0000, 0x40_0000])

    mark = admin.mark()
    tenant.close()
    gone = await admin.event("TENANT_DISCONNECTED", lambda d: d.get("session") == session, since=mark)
    R.check("TENANT_DISCONNECTED counts what the session held (3 mappings, 0x3000 bytes)",
            gone["data"].get("mappings") == 3 and gone["data"].get("bytes") == 0x3000, f"{gone!r}")

    stats = await admin.run("query-stats")
    R.check("query-stats has the documented keys",
            {"requests", "allowed", "denied", "denied-by-reason", "sessions", "sessions-total", "mappings", "bytes",
             "events-dropped", "latency-ns"} <= set(stats), f"{stats!r}")
    metrics = await admin.run("query-metrics")
    R.check("query-metrics returns {text}", set(metrics) == {"text"} and "iommu_policyd_" in metrics["text"],
            f"{str(metrics)[:200]}")


async def _absent(admin, first):
    return not any(r["first"] == first for r in await admin.run("query-reserved-regions"))


# ---------------------------------------------------------------------------------------------
# 3. getfd, closefd, add-client


async def fd_passing(ctx):
    admin = ctx.admin
    error_class, desc = await admin.fails("getfd", {"fdname": "nothing"})
    R.equal("getfd with no fd sent is a GenericError", error_class, "GenericError")

    read_end, write_end = os.pipe()
    try:
        admin.qmp.send_fd_scm(read_end)
        R.equal("getfd names an fd sent with send_fd_scm", await admin.run("getfd", {"fdname": "pipe"}), {})
        R.equal("closefd closes it", await admin.run("closefd", {"fdname": "pipe"}), {})
        error_class, _ = await admin.fails("closefd", {"fdname": "pipe"})
        R.equal("closefd of a closed name is a GenericError", error_class, "GenericError")
        error_class, _ = await admin.fails("add-client", {"fdname": "pipe"})
        R.equal("add-client of a closed name is a GenericError", error_class, "GenericError")
    finally:
        os.close(read_end)
        os.close(write_end)

    # getfd names the oldest fd queued: a pipe end sent first, then the socketpair end.
    read_end, write_end = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    admin.qmp.send_fd_scm(read_end)
    admin.qmp.send_fd_scm(theirs.fileno())
    os.close(read_end)
    os.close(write_end)
    theirs.close()
    R.equal("getfd names the oldest queued fd (the pipe)", await admin.run("getfd", {"fdname": "older"}), {})
    R.equal("getfd names the socketpair end", await admin.run("getfd", {"fdname": "vmm"}), {})
    error_class, desc = await admin.fails("add-client", {"fdname": "older"})
    R.check("add-client of the pipe is a GenericError (so getfd took the fds in order)",
            error_class == "GenericError", f"{error_class} {desc!r}")
    R.equal("closefd of the pipe", await admin.run("closefd", {"fdname": "older"}), {})
    error_class, _ = await admin.fails("add-client", {"fdname": "vmm", "protocol": "qmp"})
    R.equal("add-client with protocol other than vfio-user is a GenericError", error_class, "GenericError")
    mark = admin.mark()
    result = await admin.run("add-client", {"fdname": "vmm", "protocol": "vfio-user"})
    ctx.ledger.sessions += 1
    R.check("add-client returns {session}", set(result) == {"session"} and isinstance(result["session"], int),
            f"{result!r}")
    session = result.get("session")
    connected = await admin.event("TENANT_CONNECTED", lambda d: d.get("session") == session, since=mark)
    R.check("TENANT_CONNECTED for the added client names this script's pid and uid",
            connected["data"].get("pid") == os.getpid() and connected["data"].get("uid") == ctx.uid, f"{connected!r}")
    tenants = await admin.run("query-tenants")
    entry = [t for t in tenants if t["session"] == session]
    R.check("query-tenants shows the new session with this script's pid",
            len(entry) == 1 and entry[0]["pid"] == os.getpid() and entry[0]["uid"] == ctx.uid
            and entry[0]["rule"] == ctx.rule(ctx.uid), f"{tenants!r}")
    error_class, _ = await admin.fails("add-client", {"fdname": "vmm"})
    R.equal("the name is used up by add-client", error_class, "GenericError")

    tenant = VfioUserTenant(sock=ours)
    tenant.version()
    R.equal("the socketpair end speaks the tenant protocol: attach group 2", tenant.attach(2), 0)
    ctx.ledger.attach_allowed += 1
    memory = os.memfd_create("admin-test")
    os.ftruncate(memory, 0x2000)
    error, detail = tenant.map(0x100_0000, 0x2000, memory=memory)
    os.close(memory)
    ctx.ledger.map_allowed += 1
    R.equal("... and maps with a memfd", (error, detail), (0, ""))
    R.equal("query-mappings shows the added client's mapping", await admin.run("query-mappings", {"tenant": session}),
            {"total": 1, "mappings": [{"session": session, "iova": 0x100_0000, "size": 0x2000, "flags": "rw",
                                       "backed": True}]})
    mark = admin.mark()
    tenant.close()
    await admin.event("TENANT_DISCONNECTED", lambda d: d.get("session") == session, since=mark)
    R.check("closing the socketpair end ends the session",
            all(t["session"] != session for t in await admin.run("query-tenants")))


# ---------------------------------------------------------------------------------------------
# 4. DMA_MAP_DENIED and the tenant events


async def denial_events(ctx):
    admin = ctx.admin
    mark = admin.mark()
    status, stdout, stderr = await ctx.run_ctl("map", "--group", "0", "--iova", "0xfee00000", "--size", "0x1000",
                                               "--json")
    ctx.ledger.sessions += 1
    ctx.ledger.attach_allowed += 1
    ctx.ledger.map_denied += 1
    R.check("iommu-policyctl map at 0xfee00000 is denied (exit 1, errno 22)",
            status == 1 and '"errno":22' in stdout, f"status {status}, {stdout!r} {stderr!r}")
    pid = ctx.children[-1].pid
    connected = await admin.event("TENANT_CONNECTED", lambda d: d.get("pid") == pid, since=mark)
    R.equal("TENANT_CONNECTED for iommu-policyctl",
            {k: connected["data"].get(k) for k in ("uid", "gid", "pid", "rule")},
            {"uid": ctx.uid, "gid": ctx.gid, "pid": pid, "rule": ctx.rule(ctx.uid)})
    session = connected["data"].get("session")
    denied = await admin.event("DMA_MAP_DENIED", lambda d: as_int(d.get("tenant-pid")) == pid, since=mark)
    data = denied["data"]
    R.note(f"DMA_MAP_DENIED data: {json.dumps(data, sort_keys=True)}")
    R.check("DMA_MAP_DENIED has every audit field", set(DENIAL_FIELDS) <= set(data),
            f"missing {sorted(set(DENIAL_FIELDS) - set(data))}")
    expected = {"session-id": session, "tenant-uid": ctx.uid, "tenant-gid": ctx.gid, "tenant-pid": pid,
                "iommu-group": 0, "dma-iova": MSI_FIRST, "dma-size": 0x1000, "dma-flags": 3, "errno": EINVAL}
    R.equal("DMA_MAP_DENIED numeric fields", {k: as_int(data.get(k)) for k in expected}, expected)
    R.equal("DMA_MAP_DENIED decision, region-kind",
            (data.get("decision"), data.get("region-kind")), ("deny", "msi"))
    R.check("DMA_MAP_DENIED reason and region-source",
            "msi" in str(data.get("reason")) and "x86-intel" in str(data.get("region-source")), f"{data!r}")
    gone = await admin.event("TENANT_DISCONNECTED", lambda d: d.get("session") == session, since=mark)
    R.check("TENANT_DISCONNECTED after the denied map",
            gone["data"].get("pid") == pid and gone["data"].get("uid") == ctx.uid
            and gone["data"].get("mappings") == 0 and gone["data"].get("bytes") == 0
            and isinstance(gone["data"].get("reason"), str), f"{gone!r}")


# ---------------------------------------------------------------------------------------------
# 5 and 6. Reload with a new [[reserved]] region, and a reload of a broken policy


async def reloads(ctx):
    admin = ctx.admin
    inside, holder_in = await ctx.holder(group=0, iova=0x5000_0000)
    outside, holder_out = await ctx.holder(group=1, iova=0x6000_0000)
    before = await admin.run("query-mappings")
    extra = ("[[reserved]]\n"
             "first = 0x5000_0000\n"
             'last = "0x5fff_ffff"\n'
             'kind = "reserved"\n'
             'comment = "added by the reload test"\n')
    ctx.extra_policy = extra
    good_policy = ctx.policy_text()
    region_line = good_policy.splitlines().index("[[reserved]]") + 1
    ctx.write_policy(good_policy)
    mark = admin.mark()
    reloaded = await admin.run("reload")
    ctx.ledger.reloads_ok += 1
    ctx.ledger.revocations += 1
    R.check("reload after a new [[reserved]] revokes the one overlapping mapping",
            reloaded.get("revoked") == 1 and reloaded.get("sessions-ended") == 0, f"{reloaded!r}")
    event = await admin.event("POLICY_RELOADED", since=mark)
    R.check("POLICY_RELOADED reports it", event["data"].get("revoked") == 1 and "trigger" in event["data"],
            f"{event!r}")
    revoked = admin.events_since(mark, "MAPPING_REVOKED")
    R.check("exactly one MAPPING_REVOKED, naming the mapping inside the new region",
            len(revoked) == 1 and as_int(revoked[0]["data"].get("session-id")) == holder_in["session"]
            and as_int(revoked[0]["data"].get("dma-iova")) == 0x5000_0000
            and as_int(revoked[0]["data"].get("dma-size")) == 0x1000 and "revoke-cause" in revoked[0]["data"],
            f"{revoked!r}")
    after = await admin.run("query-mappings")
    R.equal("query-mappings: the mapping outside is untouched, the one inside is gone", after,
            {"total": before["total"] - 1,
             "mappings": [m for m in before["mappings"] if m["session"] != holder_in["session"]]})
    regions = await admin.run("query-reserved-regions")
    new = [r for r in regions if r["first"] == 0x5000_0000]
    R.check("query-reserved-regions has the new region with its source line",
            len(new) == 1 and new[0]["last"] == 0x5FFF_FFFF and new[0]["kind"] == "reserved"
            and f"{ctx.daemon.policy}:{region_line}" in new[0]["source"], f"{new!r}")

    # A broken policy changes nothing.
    tenants = await admin.run("query-tenants")
    broken = good_policy.splitlines()
    unknown_line = broken.index("[defaults]") + 2
    broken.insert(unknown_line - 1, "no_such_key = 1")
    bad_value_line = broken.index('max_bytes = "1G"') + 1
    broken[bad_value_line - 1] = 'max_bytes = "lots"'
    ctx.write_policy("\n".join(broken) + "\n")
    mark = admin.mark()
    error_class, desc = await admin.fails("reload")
    ctx.ledger.reloads_failed += 1
    R.equal("reload of a policy with an unknown key and a bad value is a GenericError", error_class, "GenericError")
    R.check(f"... whose desc names both lines ({unknown_line} and {bad_value_line})",
            isinstance(desc, str) and re.search(rf"\b{unknown_line}\b", desc)
            and re.search(rf"\b{bad_value_line}\b", desc) and "no_such_key" in desc, f"{desc!r}")
    R.equal("... and changes no region", await admin.run("query-reserved-regions"), regions)
    R.equal("... no mapping", await admin.run("query-mappings"), after)
    R.equal("... no tenant", await admin.run("query-tenants"), tenants)

    syntax = good_policy.splitlines()
    syntax_line = len(syntax) + 1
    ctx.write_policy("\n".join(syntax) + "\n[[tenant\n")
    error_class, desc = await admin.fails("reload")
    ctx.ledger.reloads_failed += 1
    R.check(f"reload of a policy that is not TOML is a GenericError naming line {syntax_line}",
            error_class == "GenericError" and re.search(rf"\b{syntax_line}\b", str(desc)), f"{error_class} {desc!r}")
    R.equal("... and changes no region", await admin.run("query-reserved-regions"), regions)
    R.equal("... no mapping", await admin.run("query-mappings"), after)
    R.check("no POLICY_RELOADED for a failed reload", not admin.events_since(mark, "POLICY_RELOADED"),
            f"{admin.events_since(mark, 'POLICY_RELOADED')!r}")

    ctx.write_policy(good_policy)
    reloaded = await admin.run("reload")
    ctx.ledger.reloads_ok += 1
    R.equal("reload of the fixed policy", (reloaded.get("revoked"), reloaded.get("sessions-ended")), (0, 0))

    mark = admin.mark()
    for process in (inside, outside):
        await ctx.end(process)
    for entry in (holder_in, holder_out):
        await admin.event("TENANT_DISCONNECTED", lambda d, s=entry["session"]: d.get("session") == s, since=mark)


# ---------------------------------------------------------------------------------------------
# 7. uid 65534: refused at the admin socket, served at the tenant socket


NOBODY_ADMIN_PROBE = r"""
import asyncio, json, os, socket, sys
path = sys.argv[1]
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(path)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    out["raw"] = "eof"
    out["raw_bytes"] = data.decode(errors="replace")
except socket.timeout:
    out["raw"] = "timeout"
except OSError as error:
    out["raw"] = "error: %r" % error
try:
    from qemu.qmp import QMPClient
except ImportError as error:
    out["qmp"] = "import failed: %r" % error
else:
    async def attempt():
        client = QMPClient("nobody")
        try:
            await asyncio.wait_for(client.connect(path), 10)
        except BaseException as error:
            cause = getattr(error, "exc", None)
            return "refused: %s: %s (%r)" % (type(error).__name__, error, cause)
        await client.disconnect()
        return "connected"
    out["qmp"] = asyncio.run(attempt())
print(json.dumps(out))
"""


async def nobody(ctx):
    if not ctx.root:
        R.skip("uid 65534 checks (setpriv)", "not running as root, so the script cannot become uid 65534")
        return
    if shutil.which("setpriv") is None:
        R.check("setpriv is installed (util-linux)", False, "setpriv not found on PATH")
        return
    admin = ctx.admin
    # Everything uid 65534 runs must be reachable by it: the directory, a copy of iommu-policyctl,
    # a Python it may execute and a copy of qemu.qmp (the installed one may sit under /root).
    os.chmod(ctx.dir, 0o755)
    bin_dir = os.path.join(ctx.dir, "bin")
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    ctl = os.path.join(bin_dir, "iommu-policyctl")
    shutil.copy2(ctx.ctl, ctl)
    os.chmod(ctl, 0o755)
    import qemu.qmp
    lib = os.path.join(ctx.dir, "pylib")
    shutil.copytree(os.path.dirname(qemu.qmp.__file__), os.path.join(lib, "qemu", "qmp"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(lib):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    probe = os.path.join(ctx.dir, "nobody_admin_probe.py")
    with open(probe, "w") as file:
        file.write(NOBODY_ADMIN_PROBE)
    os.chmod(probe, 0o644)
    drop = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    python = None
    for candidate in dict.fromkeys([sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]):
        if candidate and subprocess.run(drop + [candidate, "-c", "pass"], capture_output=True).returncode == 0:
            python = candidate
            break
    if not R.check("a python3 that uid 65534 can run", python is not None, "neither this python nor /usr/bin/python3"):
        return

    log_before = len(ctx.daemon.log())
    process = await asyncio.create_subprocess_exec(
        *drop, python, probe, ctx.daemon.admin_socket, env={**os.environ, "PYTHONPATH": lib},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    try:
        outcome = json.loads(stdout)
    except ValueError:
        outcome = {}
    R.check("the probe ran as uid 65534", outcome.get("uid") == NOBODY and outcome.get("groups") == [],
            f"{stdout!r} {stderr!r}")
    R.check("uid 65534 is closed before the greeting (raw socket: EOF, no bytes)",
            outcome.get("raw") == "eof" and outcome.get("raw_bytes") == "", f"{outcome!r}")
    R.check("uid 65534's QMPClient.connect fails", str(outcome.get("qmp", "")).startswith("refused"), f"{outcome!r}")
    R.note(f"QMPClient as uid 65534: {outcome.get('qmp')}")
    record = await eventually(
        "the admin-refused audit record",
        lambda: [line for line in ctx.daemon.log()[log_before:].splitlines()
                 if "admin-refused" in line and str(NOBODY) in line])
    R.check("the daemon logs an admin-refused audit record naming uid 65534", record, "")

    mark = admin.mark()
    status, stdout, stderr = await ctx.run_ctl("map", "--iova", "0x70000000", "--size", "0x1000", as_nobody=True,
                                               ctl=ctl)
    ctx.ledger.sessions += 1
    ctx.ledger.attach_allowed += 1  # implicit: the rule lets it attach only group 1
    ctx.ledger.map_allowed += 1
    R.check("uid 65534 maps through the tenant socket under its [[tenant]] rule",
            status == 0 and stdout == "mapped\n", f"status {status}, {stdout!r} {stderr!r}")
    connected = await admin.event("TENANT_CONNECTED", lambda d: d.get("uid") == NOBODY, since=mark)
    R.equal("its TENANT_CONNECTED names uid 65534 and its rule",
            (connected["data"].get("gid"), connected["data"].get("rule")), (NOBODY, ctx.rule(NOBODY)))
    await admin.event("TENANT_DISCONNECTED", lambda d: d.get("uid") == NOBODY, since=mark)

    # A reload that drops uid 65534's rule ends its session (README, "The admin plane").
    holder = await asyncio.create_subprocess_exec(
        *drop, ctl, "map", "--socket", ctx.daemon.tenant_socket, "--iova", "0x71000000", "--size", "0x1000",
        "--hold", "30", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ctx.children.append(holder)
    ctx.ledger.sessions += 1
    ctx.ledger.attach_allowed += 1
    ctx.ledger.map_allowed += 1

    async def held():
        if holder.returncode is not None:
            raise RuntimeError(f"iommu-policyctl as 65534 exited with {holder.returncode}: "
                               f"{await holder.stderr.read()!r}")
        return next((t for t in await admin.run("query-tenants") if t["uid"] == NOBODY and t["mappings"] == 1),
                    None)

    entry = await eventually("uid 65534's held mapping", held)
    ctx.write_policy(ctx.policy_text(nobody=False))
    mark = admin.mark()
    reloaded = await admin.run("reload")
    ctx.ledger.reloads_ok += 1
    ctx.ledger.revocations += reloaded.get("revoked", 0)
    R.equal("reload without uid 65534's rule ends its session", reloaded.get("sessions-ended"), 1)
    gone = await admin.event("TENANT_DISCONNECTED", lambda d: d.get("session") == entry["session"], since=mark)
    R.check("... with a TENANT_DISCONNECTED for it", gone["data"].get("uid") == NOBODY, f"{gone!r}")
    event = await admin.event("POLICY_RELOADED", since=mark)
    R.equal("... and POLICY_RELOADED says so", event["data"].get("sessions-ended"), 1)
    R.check("... its mapping is gone from query-mappings",
            all(m["session"] != entry["session"] for m in (await admin.run("query-mappings"))["mappings"]))
    ctx.write_policy(ctx.policy_text())
    R.equal("reload with the rule back", (await admin.run("reload")).get("sessions-ended"), 0)
    ctx.ledger.reloads_ok += 1


# ---------------------------------------------------------------------------------------------
# 8. qmp-shell


async def qmp_shell(ctx):
    shell = shutil.which("qmp-shell")
    command = [shell] if shell else [sys.executable, "-m", "qemu.qmp.qmp_shell"]
    process = await asyncio.create_subprocess_exec(
        *command, ctx.daemon.admin_socket, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(
        process.communicate(b"query-reserved-regions\nquery-usable-ranges groups=[0]\n"), 60)
    output = stdout.decode(errors="replace")
    R.check("qmp-shell exits 0 at the end of its input", process.returncode == 0,
            f"status {process.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    R.check("qmp-shell's banner reads the version triple", "Connected to QEMU 0.1.0" in output or
            re.search(r"Connected to QEMU \d+\.\d+\.\d+", output), output[:500])
    R.check("qmp-shell query-reserved-regions shows the MSI window",
            '"first": 4276092928' in output and '"last": 4277141503' in output and '"msi"' in output, output[-2000:])
    R.check("qmp-shell query-usable-ranges groups=[0]", '{"first": 4277141504, "last": 281474976710655}' in output,
            output[-2000:])


# ---------------------------------------------------------------------------------------------
# 9. Statistics and metrics


def samples(text):
    """{(sample name, sorted labels): value} from Prometheus text, parsed by prometheus_client."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def total(parsed, name, **labels):
    return sum(value for (sample, sample_labels), value in parsed.items()
               if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()))


def counter_view(parsed):
    """The counters the test can predict."""
    requests = "iommu_policyd_requests_total"
    return {
        "map allowed": total(parsed, requests, command="map", result="allowed"),
        "map denied": total(parsed, requests, command="map", result="denied"),
        "attach allowed": total(parsed, requests, command="attach", result="allowed"),
        "sessions opened": total(parsed, "iommu_policyd_sessions_opened_total"),
        "revocations": total(parsed, "iommu_policyd_revocations_total"),
        "reloads ok": total(parsed, "iommu_policyd_reloads_total", result="ok"),
        "reloads failed": total(parsed, "iommu_policyd_reloads_total", result="failed"),
        "sessions": total(parsed, "iommu_policyd_sessions"),
        "mappings": total(parsed, "iommu_policyd_mappings"),
        "mapped bytes": total(parsed, "iommu_policyd_mapped_bytes"),
    }


async def statistics(ctx):
    admin = ctx.admin
    ledger = ctx.ledger
    expected = {
        "map allowed": ledger.map_allowed, "map denied": ledger.map_denied, "attach allowed": ledger.attach_allowed,
        "sessions opened": ledger.sessions, "revocations": ledger.revocations, "reloads ok": ledger.reloads_ok,
        "reloads failed": ledger.reloads_failed, "sessions": 0, "mappings": 0, "mapped bytes": 0,
    }
    # Every session has ended; the gauges follow asynchronously.
    await eventually("no tenant session", lambda: _no_tenants(admin))

    stats = await admin.run("query-stats")
    R.equal("query-stats requests = allowed + denied", stats["requests"], stats["allowed"] + stats["denied"])
    R.equal("query-stats denied-by-reason adds up to denied", sum(stats["denied-by-reason"].values()), stats["denied"])
    R.equal("query-stats allowed = the maps and attaches the test made",
            stats["allowed"], ledger.map_allowed + ledger.attach_allowed)
    R.equal("query-stats denied = the maps the test had denied", stats["denied"], ledger.map_denied)
    R.equal("query-stats sessions, sessions-total, mappings, bytes, events-dropped",
            {k: stats[k] for k in ("sessions", "sessions-total", "mappings", "bytes", "events-dropped")},
            {"sessions": 0, "sessions-total": ledger.sessions, "mappings": 0, "bytes": 0, "events-dropped": 0})
    latency = stats["latency-ns"]
    R.check("query-stats latency-ns p50 <= p90 <= p99 <= max, max > 0",
            set(latency) == {"p50", "p90", "p99", "max"}
            and 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] and latency["max"] > 0,
            f"{latency!r}")

    text = (await admin.run("query-metrics"))["text"]
    try:
        live = samples(text)
    except Exception as error:  # noqa: BLE001
        R.check("query-metrics text parses with prometheus_client", False, f"{error!r}\n{text}")
        return
    R.check("query-metrics text parses with prometheus_client", live)
    R.equal("query-metrics counters match what the test did", counter_view(live), expected)
    map_requests = total(live, "iommu_policyd_requests_total", command="map")
    R.equal("the map latency histogram counts every map", total(live, "iommu_policyd_decision_duration_seconds_count",
                                                                command="map"), map_requests)
    R.equal("query-stats requests = iommu_policyd_requests_total", stats["requests"],
            total(live, "iommu_policyd_requests_total"))

    # The textfile is rewritten every 10 s: wait for a write that has caught up.
    def textfile():
        with open(ctx.daemon.metrics) as file:
            content = file.read()
        parsed = samples(content)
        return parsed if counter_view(parsed) == expected else None

    try:
        parsed = await eventually("the metrics textfile to catch up", textfile, timeout=12, interval=0.25)
        R.check("the metrics textfile parses with prometheus_client and matches the counters",
                counter_view(parsed) == expected)
    except TimeoutError as error:
        try:
            with open(ctx.daemon.metrics) as file:
                content = file.read()
            detail = f"{counter_view(samples(content))!r}, expected {expected!r}"
        except Exception as failure:  # noqa: BLE001
            detail = f"{failure!r}"
        R.check("the metrics textfile parses with prometheus_client and matches the counters", False,
                f"{error}: {detail}")
    leftovers = [n for n in os.listdir(ctx.dir) if n.startswith("metrics") and n != "metrics.prom"]
    R.equal("no temporary metrics file is left behind", leftovers, [])


async def _no_tenants(admin):
    return await admin.run("query-tenants") == []


# ---------------------------------------------------------------------------------------------
# A slow reader loses events and is told so


async def slow_reader(ctx):
    admin = ctx.admin
    dropped_before = (await admin.run("query-stats"))["events-dropped"]
    slow = RawQMP(ctx.daemon.admin_socket)
    try:
        slow.message()
        slow.send('{"execute": "qmp_capabilities"}')
        R.equal("the slow reader negotiates", slow.reply(), {"return": {}})
        # It now reads nothing while more events happen than its socket buffer and its queue of
        # 1024 hold; how many fit in the socket buffer depends on the host, so go on until the
        # daemon counts drops (well within the 10 s a blocked send may take). The main
        # connection reads everything, so it has the full sequence.
        mark = admin.mark()
        pairs = 0
        while pairs < 10000:
            for _ in range(200):
                added = await admin.run("add-reserved-region", {"first": 0x9000_0000, "size": 0x1000})
                await admin.run("remove-reserved-region", {"id": added["id"]})
            pairs += 200
            if (await admin.run("query-stats"))["events-dropped"] - dropped_before >= 100:
                break
        await eventually("every REGIONS_CHANGED on the reading connection",
                         lambda: len(admin.events_since(mark, "REGIONS_CHANGED")) >= 2 * pairs)
        reference = [(e["data"].get("cause"), e["timestamp"]["seconds"], e["timestamp"]["microseconds"])
                     for e in admin.events_since(mark, "REGIONS_CHANGED")]
        R.equal("the connection that reads loses nothing", admin.events_since(mark, "EVENTS_DROPPED"), [])
        index = {key: position for position, key in enumerate(reference)}
        # Read until every event is accounted for, as received or as counted by EVENTS_DROPPED.
        received, accounted = [], 0
        slow.sock.settimeout(10)
        try:
            while accounted < len(reference):
                message = slow.message()
                if message.get("event") == "EVENTS_DROPPED":
                    received.append(("dropped", message["data"].get("count")))
                    accounted += message["data"].get("count") or 0
                elif message.get("event") == "REGIONS_CHANGED":
                    key = (message["data"].get("cause"), message["timestamp"]["seconds"],
                           message["timestamp"]["microseconds"])
                    received.append(("event", index.get(key)))
                    accounted += 1
        except socket.timeout:
            R.note(f"the slow reader's events stopped with {accounted} of {len(reference)} accounted for")
        markers = [position for position, (kind, _) in enumerate(received) if kind == "dropped"]
        got = [value for kind, value in received if kind == "event"]
        lost = len(reference) - len(got)
        R.check("the slow reader lost events and got one EVENTS_DROPPED",
                lost > 0 and len(markers) == 1, f"lost {lost}, markers at {markers}")
        if markers:
            count = received[markers[0]][1]
            R.equal("EVENTS_DROPPED count is how many it lost", count, lost)
            before, after = got[:markers[0]], got[markers[0]:]
            missing = sorted(set(range(len(reference))) - set(got))
            R.check("EVENTS_DROPPED comes where the events were lost: every event before it is older, every "
                    "event after it newer than the lost ones",
                    missing and all(i < missing[0] for i in before) and all(i > missing[-1] for i in after),
                    f"of {len(reference)} events (numbered from 0) it lost #{missing[0]}-#{missing[-1]}, but "
                    f"EVENTS_DROPPED came after #{before[-1] if before else None} and before "
                    f"#{after[0] if after else None}..#{after[-1] if after else None} "
                    f"({len(before)} events before the marker, {len(after)} after)" if missing else "nothing lost")
            stats = await admin.run("query-stats")
            R.equal("query-stats events-dropped counts them", stats["events-dropped"] - dropped_before, lost)
            live = samples((await admin.run("query-metrics"))["text"])
            R.equal("iommu_policyd_events_dropped_total counts them",
                    total(live, "iommu_policyd_events_dropped_total") - dropped_before, lost)
        slow.sock.settimeout(10)
        slow.send('{"execute": "query-version", "id": "still-there"}')
        R.equal("the slow reader's connection still works", slow.reply().get("id"), "still-there")
    finally:
        slow.close()


# ---------------------------------------------------------------------------------------------


SECTIONS = [
    ("negotiation", negotiation),
    ("events and the socket", no_events_before_negotiation),
    ("persistent regions and restart", persistence),
    ("commands", commands),
    ("getfd, closefd, add-client", fd_passing),
    ("denial events", denial_events),
    ("reload", reloads),
    ("uid 65534", nobody),
    ("qmp-shell", qmp_shell),
    ("statistics and metrics", statistics),
    ("slow reader", slow_reader),
]


async def main_async(ctx):
    try:
        await run_sections(ctx)
    finally:
        await ctx.end_children()


async def run_sections(ctx):
    os.makedirs(ctx.daemon.state, exist_ok=True)
    ctx.write_policy(ctx.policy_text())
    await ctx.daemon.start()
    ctx.admin = await Admin("main").connect(ctx.daemon.admin_socket)
    for title, section in SECTIONS:
        print(f"== {title}", flush=True)
        began = time.monotonic()
        try:
            await section(ctx)
            print(f"   ({title}: {time.monotonic() - began:.1f} s)", flush=True)
        except Exception:  # noqa: BLE001 - report, then go on with the next section
            R.check(f"{title}: ran to the end", False, traceback.format_exc())
            if ctx.daemon.process.poll() is not None:
                R.check("the daemon is still running", False, f"it exited with {ctx.daemon.process.returncode}")
                return
            try:
                await ctx.admin.run("query-version")
            except Exception:  # noqa: BLE001
                ctx.admin = await Admin("main").connect(ctx.daemon.admin_socket)
        finally:
            # A section's tenants end with it, whether or not it got to end them itself.
            await ctx.end_children()
    await ctx.admin.disconnect()
    R.equal("the daemon stops on SIGTERM with status 0", ctx.daemon.stop(), 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("daemon", nargs="?", default=os.environ.get("IOMMU_POLICYD"))
    parser.add_argument("ctl", nargs="?", default=os.environ.get("IOMMU_POLICYCTL"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if not args.daemon or not args.ctl:
        parser.error("give the iommu-policyd and iommu-policyctl binaries (or $IOMMU_POLICYD, $IOMMU_POLICYCTL)")
    args.daemon, args.ctl = os.path.abspath(args.daemon), os.path.abspath(args.ctl)

    started = time.monotonic()
    directory = tempfile.mkdtemp(prefix="policyd-qmp-script-")
    ctx = Context(args, directory)
    try:
        asyncio.run(main_async(ctx))
    except Exception:  # noqa: BLE001
        R.check("the test ran", False, traceback.format_exc())
    finally:
        ctx.daemon.stop()
        if R.failed:
            print("---- daemon log (tail) ----")
            print(ctx.daemon.log_tail())
            print("---- end of daemon log ----")
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    skipped = f", {R.skipped} skipped" if R.skipped else ""
    print(f"{R.passed} passed, {R.failed} failed{skipped} ({time.monotonic() - started:.1f} s)")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
