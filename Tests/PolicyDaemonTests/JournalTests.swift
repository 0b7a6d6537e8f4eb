import Foundation
import Glibc
import TestSupport
import Testing

/// The audit trail end to end: the daemon writes to a real systemd-journald, running in a
/// private mount namespace so the machine's own journal is untouched, and journalctl reads the
/// records back, with the project's catalog compiled in.
@Suite(
    .serialized,
    .enabled(if: JournalRig.unavailable == nil, "\(JournalRig.unavailable ?? "")"))
struct JournalTests {
    static let mapAllowedID = "cf79cac2d142464a84fd184a72ef1cec"
    static let mapDeniedID = "92090363d1db4fb0b7263094bc97804f"

    @Test func anAllowedAndAnMSIDeniedMapAreStructuredJournalRecordsAndTheDenialCarriesCatalogText() throws {
        let rig = try JournalRig.run()
        let records = rig.records.filter { $0["SYSLOG_IDENTIFIER"] == "iommu-policyd" }

        let allowed = try #require(
            records.first { $0["MESSAGE_ID"] == Self.mapAllowedID },
            "no map-allowed record in:\n\(rig.transcript)")
        #expect(allowed["PRIORITY"] == "6")
        #expect(allowed["TENANT_UID"] == "0")
        #expect(allowed["TENANT_PID"] == String(rig.allowedClientPID))
        #expect(allowed["IOMMU_GROUP"] == "0")
        #expect(allowed["DMA_IOVA"] == "0x40000000")
        #expect(allowed["DMA_SIZE"] == "0x1000")
        #expect(allowed["DECISION"] == "allow")
        #expect(allowed["ERRNO"] == "0")
        #expect(allowed["AUDIT_EVENT"] == "map-allowed")

        let denied = try #require(
            records.first { $0["MESSAGE_ID"] == Self.mapDeniedID },
            "no map-denied record in:\n\(rig.transcript)")
        #expect(denied["PRIORITY"] == "4")
        #expect(denied["TENANT_UID"] == "0")
        #expect(denied["TENANT_PID"] == String(rig.deniedClientPID))
        #expect(denied["IOMMU_GROUP"] == "0")
        #expect(denied["DMA_IOVA"] == "0xfee00000")
        #expect(denied["DMA_SIZE"] == "0x1000")
        #expect(denied["DECISION"] == "deny")
        #expect(denied["ERRNO"] == String(EINVAL))
        #expect(denied["REASON"]?.contains("msi region 0xfee00000-0xfeefffff") == true)
        #expect(denied["REGION_KIND"] == "msi")
        #expect(denied["REGION_SOURCE"] == "profile x86-intel")
        #expect(denied["MESSAGE"] == denied["REASON"])

        for record in [allowed, denied] {
            #expect(record["CODE_FILE"]?.hasSuffix("Session.swift") == true)
            #expect(Int(record["CODE_LINE"] ?? "") ?? 0 > 0)
            #expect(record["CODE_FUNC"]?.isEmpty == false)
            #expect(record["_TRANSPORT"] == "journal", "written with sd_journal_sendv, not through stderr")
        }
        // The session's other records carry their own ids.
        let ids = Set(records.compactMap { $0["MESSAGE_ID"] })
        #expect(ids.contains("4f711c702f554d19886bf8f095100e3c"), "session-opened")
        #expect(ids.contains("ba53dc94df734496983334b9dd8c3d72"), "session-closed")

        // journalctl -x explains the denial with the catalog entry, fields filled in.
        #expect(rig.explained.contains("DMA mapping denied for uid 0 at IOVA 0xfee00000"), "\(rig.explained)")
        #expect(rig.explained.contains("refused with errno 22"), "\(rig.explained)")
        #expect(rig.explained.contains("Conflicting region, if any: msi from profile x86-intel"), "\(rig.explained)")
        #expect(rig.explained.contains("iommu-policyctl ranges --group N"), "\(rig.explained)")
    }
}

/// Runs journald, the daemon and two tenant maps in a private mount namespace.
struct JournalRig {
    var records: [[String: String]]
    var explained: String
    var allowedClientPID: Int32
    var deniedClientPID: Int32
    var transcript: String

    static let journald = "/lib/systemd/systemd-journald"

    /// Why the rig cannot run here, or nil.
    static let unavailable: String? = {
        if getuid() != 0 { return "a private journald needs root (a mount namespace)" }
        for tool in [journald, "/usr/bin/unshare", "/usr/bin/journalctl"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is not installed"
        }
        return nil
    }()

    /// The script, run as `bash -c SCRIPT rig DAEMON POLICYCTL WORKDIR CATALOG`. Every mount is
    /// a tmpfs in the namespace: the journal directories, the catalog source and its database.
    static let script = #"""
        set -euo pipefail
        daemon=$1 ctl=$2 work=$3 catalog=$4
        for dir in /run/systemd /run/log /var/log/journal /var/lib/systemd/catalog /usr/lib/systemd/catalog; do
            mkdir -p "$dir"
            mount -t tmpfs tmpfs "$dir"
        done
        mkdir -p /run/systemd/journal
        sed -e 's|@DOCDIR@|/usr/share/doc/iommu-policyd|g' "$catalog" >/usr/lib/systemd/catalog/iommu-policyd.catalog
        journalctl --update-catalog
        /lib/systemd/systemd-journald >"$work/journald.log" 2>&1 &
        journald=$!
        trap 'kill $journald $daemon_pid 2>/dev/null || true' EXIT
        daemon_pid=
        for _ in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
        "$daemon" --log-target journal --socket "$work/tenant.sock" >"$work/daemon.log" 2>&1 &
        daemon_pid=$!
        for _ in $(seq 200); do [ -S "$work/tenant.sock" ] && break; sleep 0.05; done
        "$ctl" map --socket "$work/tenant.sock" --iova 0x40000000 --size 0x1000 >/dev/null &
        allowed=$!
        wait $allowed
        "$ctl" map --socket "$work/tenant.sock" --iova 0xfee00000 --size 0x1000 >/dev/null &
        denied=$!
        status=0
        wait $denied || status=$?
        [ "$status" -eq 1 ] || { echo "the MSI map exited $status, not 1 (denied)" >&2; exit 1; }
        kill -TERM $daemon_pid
        wait $daemon_pid || true
        journalctl --sync
        echo "PIDS $allowed $denied"
        echo "-- json"
        journalctl -D /run/log/journal -o json --all --no-pager SYSLOG_IDENTIFIER=iommu-policyd
        echo "-- explained"
        journalctl -D /run/log/journal -x --no-pager MESSAGE_ID=92090363d1db4fb0b7263094bc97804f
        """#

    static func run() throws -> JournalRig {
        let work = try TemporaryDirectory(prefix: "policyd-journal")
        let catalog = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("systemd/catalog/iommu-policyd.catalog")
        let outcome = try runProcess(
            "/usr/bin/timeout",
            [
                "120", "/usr/bin/unshare", "-m", "--propagation", "private", "/bin/bash", "-c", script, "rig",
                DaemonProcess.binary("iommu-policyd"), DaemonProcess.binary("iommu-policyctl"), work.path,
                catalog.path,
            ])
        let daemonLog = (try? String(contentsOfFile: work.path + "/daemon.log", encoding: .utf8)) ?? ""
        let transcript = "status \(outcome.status)\n\(outcome.stderr)\ndaemon:\n\(daemonLog)\n\(outcome.stdout)"
        guard outcome.status == 0 else { throw DaemonFailure("the journal rig failed: \(transcript)") }

        let lines = outcome.stdout.components(separatedBy: "\n")
        let pids = lines.first { $0.hasPrefix("PIDS ") }?.split(separator: " ").dropFirst().compactMap { Int32($0) }
        guard let pids, pids.count == 2,
            let json = lines.firstIndex(of: "-- json"), let explained = lines.firstIndex(of: "-- explained")
        else { throw DaemonFailure("unexpected rig output: \(transcript)") }
        let records = lines[(json + 1)..<explained].compactMap { line -> [String: String]? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                return nil
            }
            // journalctl prints binary or oversized fields as arrays or null; those are not ours.
            return object.compactMapValues { $0 as? String }
        }
        return JournalRig(
            records: records, explained: lines[(explained + 1)...].joined(separator: "\n"),
            allowedClientPID: pids[0], deniedClientPID: pids[1], transcript: transcript)
    }
}
