import Foundation
import TestSupport
import Testing

/// The unit files, checked by systemd's own parser. `systemd-analyze verify` only warns about
/// an unknown key or section and still exits 0, so any word on stderr is a failure too.
@Suite(.enabled(if: Tools.systemdAnalyze != nil, "systemd-analyze is not installed: the unit files are not checked"))
struct UnitFileTests {
    /// The highest `systemd-analyze security` exposure the service may have (0 best, 10 worst).
    static let exposureLimit = 2.0

    @Test func verifyAcceptsTheServiceAndBothSocketsWithoutAWord() throws {
        let scratch = try TemporaryDirectory(prefix: "systemd-units")
        let units = try SystemdFiles.installUnits(
            into: scratch, binDirectory: try SystemdFiles.binaries())
        // Together: the service names the sockets in Sockets=, and they name it in Service=.
        let outcome = try Tools.run(Tools.systemdAnalyze, ["verify"] + units)
        #expect(outcome.status == 0, "systemd-analyze verify exited \(outcome.status):\n\(outcome.stderr)")
        #expect(outcome.stderr.isEmpty, "systemd-analyze verify said:\n\(outcome.stderr)")
    }

    @Test func theServiceExposureIsAtMostTheLimit() throws {
        let scratch = try TemporaryDirectory(prefix: "systemd-units")
        let units = try SystemdFiles.installUnits(
            into: scratch, binDirectory: try SystemdFiles.binaries())
        let service = try #require(units.first { $0.hasSuffix(".service") })
        let outcome = try Tools.run(Tools.systemdAnalyze, ["security", "--offline=yes", service])
        #expect(outcome.status == 0, "systemd-analyze security exited \(outcome.status):\n\(outcome.stderr)")
        #expect(outcome.stderr.isEmpty, "systemd-analyze security said:\n\(outcome.stderr)")
        let exposure = try #require(
            Self.exposure(outcome.stdout), "no overall exposure level in:\n\(outcome.stdout)")
        // Printed so that CI logs show the figure.
        print("systemd-analyze security --offline=yes: iommu-policyd.service exposure \(exposure)")
        #expect(
            exposure <= Self.exposureLimit,
            "exposure \(exposure) is above \(Self.exposureLimit); what counts against it:\n\(Self.exposed(outcome.stdout))"
        )
    }

    @Test func theExposureParserReadsSystemdsSummaryLine() {
        #expect(Self.exposure("→ Overall exposure level for iommu-policyd.service: 0.6 SAFE 😀\n") == 0.6)
        #expect(Self.exposure("→ Overall exposure level for iommu-policyd.service: 9.6 UNSAFE 😨") == 9.6)
        #expect(Self.exposure("Overall exposure level for other.service: 1.0 OK") == nil)
        #expect(Self.exposure("") == nil)
    }

    /// The figure in "Overall exposure level for iommu-policyd.service: X.Y …".
    static func exposure(_ output: String) -> Double? {
        let marker = "Overall exposure level for iommu-policyd.service: "
        for line in output.split(separator: "\n") {
            guard let range = line.range(of: marker) else { continue }
            return line[range.upperBound...].split(separator: " ").first.flatMap { Double($0) }
        }
        return nil
    }

    /// The lines of the report that add to the exposure (marked ✗).
    static func exposed(_ output: String) -> String {
        output.split(separator: "\n").filter { $0.hasPrefix("✗") }.joined(separator: "\n")
    }
}
