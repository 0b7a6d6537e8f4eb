import Glibc
import Logging
import Testing

@testable import SystemdSupport

struct JournalFieldTests {
    @Test(arguments: [
        ("tenant.uid", "TENANT_UID"), ("dma.iova", "DMA_IOVA"), ("region.kind", "REGION_KIND"),
        ("errno", "ERRNO"), ("sl-service", "SL_SERVICE"), ("_hidden", "HIDDEN"), ("9lives", "LIVES"),
        ("ünï", "N_"), ("...", "FIELD"),
    ])
    func metadataKeysBecomeValidUpperCaseJournalFieldNames(key: String, field: String) {
        #expect(JournalWriter.fieldName(key) == field)
    }

    @Test func fieldNamesAreAtMost64Characters() {
        #expect(JournalWriter.fieldName(String(repeating: "a", count: 100)).count == 64)
    }

    @Test func aRecordCarriesTheStandardFieldsItsMetadataAndTheMessageIDOfItsEvent() {
        let writer = JournalWriter(
            identifier: "test-ident", destination: .stderr, messageIDKey: "audit.event",
            messageIDs: ["map-denied": "92090363d1db4fb0b7263094bc97804f"])
        let record = JournalRecord(
            priority: 4, message: "overlaps msi", metadata: ["audit.event": "map-denied", "dma.iova": "0xfee00000"],
            file: "PolicyDaemon/Session.swift", function: "map(_:)", line: 42)
        let fields = writer.fields(record)
        for expected in [
            "MESSAGE=overlaps msi", "PRIORITY=4", "SYSLOG_IDENTIFIER=test-ident",
            "CODE_FILE=PolicyDaemon/Session.swift",
            "CODE_LINE=42", "CODE_FUNC=map(_:)", "MESSAGE_ID=92090363d1db4fb0b7263094bc97804f",
            "AUDIT_EVENT=map-denied", "DMA_IOVA=0xfee00000",
        ] {
            #expect(fields.contains(expected), "\(fields) lacks \(expected)")
        }
    }

    @Test func aRecordOfNoKnownEventHasNoMessageID() {
        let writer = JournalWriter(identifier: "t", destination: .stderr, messageIDKey: "audit.event", messageIDs: [:])
        let record = JournalRecord(
            priority: 6, message: "m", metadata: ["audit.event": "other"], file: "f", function: "g", line: 1)
        #expect(!writer.fields(record).contains { $0.hasPrefix("MESSAGE_ID=") })
    }

    @Test(arguments: [
        (Logger.Level.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
    ])
    func swiftLogLevelsMapToSyslogPriorities(level: Logger.Level, priority: Int) {
        #expect(JournalLogHandler.priority(level) == priority)
    }
}

struct JournalDestinationTests {
    /// A pipe stands in for the stream systemd connects a service's stderr to.
    func withPipe(_ body: (Int32, String) -> Void) {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { for end in ends { close(end) } }
        var status = stat()
        #expect(fstat(ends[1], &status) == 0)
        body(ends[1], "\(status.st_dev):\(status.st_ino)")
    }

    @Test func stderrConnectedToTheStreamJournalStreamNamesGoesToTheJournal() {
        withPipe { fd, identity in
            #expect(JournalWriter.destination(journalStream: identity, stderr: fd) == .journal)
        }
    }

    @Test func stderrRedirectedElsewhereThanJournalStreamGoesToStderr() {
        withPipe { fd, identity in
            #expect(JournalWriter.destination(journalStream: identity + "1", stderr: fd) == .stderr)
            #expect(JournalWriter.destination(journalStream: "0:0", stderr: fd) == .stderr)
        }
    }

    @Test func withoutJournalStreamLogsGoToStderr() {
        withPipe { fd, _ in
            #expect(JournalWriter.destination(journalStream: nil, stderr: fd) == .stderr)
        }
    }
}
