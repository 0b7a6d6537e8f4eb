import Foundation
import PolicyDaemon
import TestSupport
import Testing

/// The journal message catalog, compiled by journalctl into a temporary root.
@Suite(.enabled(if: Tools.journalctl != nil, "journalctl is not installed: the catalog is not checked"))
struct CatalogTests {
    /// journalctl takes a line it cannot read as an entry's header for body text and says
    /// nothing, so the file's own `-- id` lines are checked too.
    @Test func theCatalogHasExactlyOneEntryForEveryMessageID() throws {
        let text = try String(contentsOf: SystemdFiles.catalog, encoding: .utf8)
        let headers = text.split(separator: "\n").filter { $0.hasPrefix("--") }.map { String($0.dropFirst(3)) }
        let hex = Set("0123456789abcdef")
        for id in headers {
            #expect(id.count == 32 && id.allSatisfy(hex.contains), "\"-- \(id)\" is not a 128-bit id in lower-case hex")
        }
        #expect(headers.count == Set(headers).count, "an id appears twice")
        #expect(Set(headers) == Set(SystemdFiles.messageIDs.values))
    }

    @Test func journalctlCompilesTheCatalogAndListsEveryMessageID() throws {
        let root = try TemporaryDirectory(prefix: "catalog-root")
        try root.write(
            "usr/lib/systemd/catalog/iommu-policyd.catalog",
            try String(contentsOf: SystemdFiles.catalog, encoding: .utf8))
        let update = try Tools.run(Tools.journalctl, ["--root=\(root.path)", "--update-catalog"])
        #expect(update.status == 0, "journalctl --update-catalog exited \(update.status):\n\(update.stderr)")
        #expect(update.stderr.isEmpty, "journalctl --update-catalog said:\n\(update.stderr)")
        #expect(FileManager.default.fileExists(atPath: "\(root.path)/var/lib/systemd/catalog/database"))

        let list = try Tools.run(Tools.journalctl, ["--root=\(root.path)", "--list-catalog", "--no-pager"])
        #expect(list.status == 0, "journalctl --list-catalog exited \(list.status):\n\(list.stderr)")
        let listed = Set(
            list.stdout.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
        for (event, id) in SystemdFiles.messageIDs.sorted(by: { $0.key < $1.key }) {
            #expect(listed.contains(id), "\(event) (\(id)) is not in the compiled catalog:\n\(list.stdout)")
        }

        // Each entry carries the headers `journalctl -x` shows.
        let dump = try Tools.run(Tools.journalctl, ["--root=\(root.path)", "--dump-catalog", "--no-pager"])
        var entries: [(id: Substring, lines: [Substring])] = []
        for line in dump.stdout.split(separator: "\n") {
            if line.hasPrefix("-- ") {
                entries.append((line.dropFirst(3), []))
            } else if !entries.isEmpty {
                entries[entries.count - 1].lines.append(line)
            }
        }
        #expect(entries.count == SystemdFiles.messageIDs.count)
        for (id, lines) in entries {
            #expect(lines.contains { $0.hasPrefix("Subject: ") }, "\(id) has no Subject")
            #expect(lines.contains("Defined-By: iommu-policyd"), "\(id) is not Defined-By iommu-policyd")
            #expect(lines.contains { $0.hasPrefix("Support: ") }, "\(id) has no Support")
        }
    }

    /// The daemon's table is the one the catalog explains, and no id has changed.
    @Test func theDaemonsMessageIDsAreThePinnedOnes() {
        let daemon = Dictionary(uniqueKeysWithValues: AuditEvent.messageIDs.map { ($0.key.name, $0.value) })
        #expect(daemon == SystemdFiles.messageIDs)
        #expect(Set(daemon.values).count == daemon.count, "two events share an id")
    }

    @Test func theMapDenialTellsAnOperatorWhatHappenedAndWhatToDo() throws {
        let text = try String(contentsOf: SystemdFiles.catalog, encoding: .utf8)
        let id = try #require(SystemdFiles.messageIDs["map-denied"])
        let start = try #require(text.range(of: "-- \(id)\n"))
        let entry = text[start.upperBound...].components(separatedBy: "\n-- ").first ?? ""
        for phrase in [
            "@DMA_IOVA@", "@DMA_SIZE@", "@REASON@", "@TENANT_UID@", "MSI", "RMRR", "IVMD", "BAR", "aperture",
            "max_mappings", "iommu-policyctl ranges", "iommu-policyctl explain", "/etc/iommu-policyd/policy.toml",
        ] {
            #expect(entry.contains(phrase), "the map-denied entry does not mention \(phrase)")
        }
    }
}
