import Foundation
import TestSupport
import Testing

/// Runs the built `iommu-policyctl` as a separate process, as scripts and later checks will.
struct PolicyCtl {
    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
        var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(stdout.utf8))) as? [String: Any]
        }
    }

    /// The tool sits beside the test bundle in SwiftPM's build directory.
    static let executable = buildDirectory.appendingPathComponent("iommu-policyctl")

    static func run(_ arguments: String...) throws -> Outcome {
        try run(arguments)
    }

    static func run(_ arguments: [String]) throws -> Outcome {
        let outcome = try runProcess(executable.path, arguments)
        return Outcome(status: outcome.status, stdout: outcome.stdout, stderr: outcome.stderr)
    }
}

@Suite struct PolicyCtlCheckTests {
    @Test func aMapAtTheMSIWindowIsDeniedWithExit1NamingTheWindowAndItsSource() throws {
        let outcome = try PolicyCtl.run(
            "check", "--profile", "x86-intel", "--group", "0", "--iova", "0xfee00000", "--size", "0x1000")
        #expect(outcome.status == 1)
        #expect(outcome.stdout.contains("msi region 0xfee00000-0xfeefffff"))
        #expect(outcome.stdout.contains("profile x86-intel"))
    }

    @Test func aMapAtOneGiBIsAllowedWithExit0() throws {
        let outcome = try PolicyCtl.run(
            "check", "--profile", "x86-intel", "--group", "0", "--iova", "0x40000000", "--size", "0x1000")
        #expect(outcome.status == 0)
        #expect(outcome.stdout == "allow\n")
    }

    @Test func theJSONCarriesDecisionErrnoReasonAndConflict() throws {
        let denied = try PolicyCtl.run(
            "check", "--profile", "x86-intel", "--group", "0", "--iova", "0xfedff000", "--size", "0x2000", "--json")
        #expect(denied.status == 1)
        let json = try #require(denied.json)
        #expect(json["decision"] as? String == "deny")
        #expect(json["errno"] as? Int == 22)
        #expect((json["reason"] as? String)?.contains("msi") == true)
        let conflict = try #require(json["conflict"] as? [String: Any])
        #expect(conflict["kind"] as? String == "msi")
        #expect(conflict["first"] as? UInt64 == 0xfee0_0000)
        #expect(conflict["last"] as? UInt64 == 0xfeef_ffff)
        #expect(conflict["source"] as? String == "profile x86-intel")

        let allowed = try PolicyCtl.run(
            "check", "--profile", "x86-intel", "--group", "0", "--iova", "4096", "--size", "4096", "--json")
        let ok = try #require(allowed.json)
        #expect(ok["decision"] as? String == "allow")
        #expect(ok["errno"] as? Int == 0)
        #expect(ok["conflict"] is NSNull)
    }

    @Test func theApertureOptionMovesTheEndOfTheSpace() throws {
        let args = ["check", "--profile", "x86-intel", "--group", "0", "--iova", "0x8000000000", "--size", "0x1000"]
        #expect(try PolicyCtl.run(args).status == 0)
        let narrow = try PolicyCtl.run(args + ["--aperture-bits", "39", "--json"])
        #expect(narrow.status == 1)
        #expect((narrow.json?["conflict"] as? [String: Any])?["kind"] as? String == "outside-aperture")
    }

    @Test func readOnlyAndWriteOnlyFlagsAreAcceptedAndUnknownBitsRefused() throws {
        let base = ["check", "--profile", "arm64-smmuv3", "--group", "0", "--iova", "0x10000000", "--size", "0x1000"]
        #expect(try PolicyCtl.run(base + ["--flags", "r"]).status == 0)
        #expect(try PolicyCtl.run(base + ["--flags", "w"]).status == 0)
        let unknown = try PolicyCtl.run(base + ["--flags", "0x4", "--json"])
        #expect(unknown.status == 1)
        #expect(unknown.json?["errno"] as? Int == 22)
    }

    @Test func aConfigRegionIsNamedByFileAndLine() throws {
        let dir = try TemporaryDirectory()
        let config = try dir.write(
            "policy.toml", "[defaults]\nmax_bytes = \"1G\"\n\n[[reserved]]\nfirst = 0x4000_0000\nlast = 0x4fff_ffff\n")
        let outcome = try PolicyCtl.run(
            "check", "--profile", "x86-amd", "--config", config, "--group", "0", "--iova", "0x4fff0000", "--size",
            "0x10000", "--json")
        #expect(outcome.status == 1)
        #expect((outcome.json?["conflict"] as? [String: Any])?["source"] as? String == "config \(config):4")
        let quota = try PolicyCtl.run(
            "check", "--profile", "x86-amd", "--config", config, "--group", "0", "--iova", "0x100000000", "--size",
            "0x80000000", "--json")
        #expect(quota.json?["errno"] as? Int == 12)
    }

    @Test func aUidThatNoTenantRuleMatchesIsRefused() throws {
        let dir = try TemporaryDirectory()
        let config = try dir.write("policy.toml", "[[tenant]]\nuid = 1000\ngroups = [1]\n")
        let base = [
            "check", "--profile", "x86-intel", "--profile-groups", "2", "--config", config, "--iova", "0x1000",
            "--size", "0x1000", "--json",
        ]
        let stranger = try PolicyCtl.run(base + ["--group", "1", "--uid", "1001"])
        #expect(stranger.status == 1)
        #expect(stranger.json?["errno"] as? Int == 1)
        let wrongGroup = try PolicyCtl.run(base + ["--group", "0", "--uid", "1000"])
        #expect(wrongGroup.json?["errno"] as? Int == 1)
        #expect(try PolicyCtl.run(base + ["--group", "1", "--uid", "1000"]).status == 0)
    }

    @Test func aGroupWithAFirmwareDirectRegionIsRefusedWithEPERM() throws {
        let dir = try TemporaryDirectory()
        try dir.write(
            "sys/kernel/iommu_groups/5/reserved_regions",
            "0x0000000079000000 0x00000000790fffff direct\n0x00000000fee00000 0x00000000feefffff msi\n")
        let outcome = try PolicyCtl.run(
            "check", "--sysfs-root", dir.path, "--group", "5", "--iova", "0x1000", "--size", "0x1000")
        #expect(outcome.status == 1)
        #expect(outcome.stdout.contains("EPERM"))
        #expect(outcome.stdout.contains("1:1 IOMMU mapping"))
    }
}

@Suite struct PolicyCtlListingTests {
    @Test func regionsListsEveryKindWithItsSource() throws {
        let outcome = try PolicyCtl.run("regions", "--profile", "x86-amd", "--json")
        #expect(outcome.status == 0)
        let regions = try #require(outcome.json?["regions"] as? [[String: Any]])
        #expect(regions.map { $0["kind"] as? String } == ["msi", "reserved", "outside-aperture"])
        #expect(regions[1]["first"] as? UInt64 == 0xfd_0000_0000)
        #expect(regions[1]["last"] as? UInt64 == 0xff_ffff_ffff)
        #expect(regions.allSatisfy { $0["source"] as? String == "profile x86-amd" })
        let text = try PolicyCtl.run("regions", "--profile", "x86-amd")
        let row = text.stdout.split(separator: "\n").first { $0.contains(" reserved ") }
        #expect(
            row?.split(separator: " ", omittingEmptySubsequences: true).map(String.init) == [
                "all", "reserved", "0xfd00000000", "0xffffffffff", "profile", "x86-amd",
            ])
    }

    @Test func rangesAreTheApertureMinusTheRegions() throws {
        let outcome = try PolicyCtl.run(
            "ranges", "--profile", "x86-intel", "--aperture-bits", "39", "--group", "0", "--json")
        #expect(outcome.status == 0)
        let usable = try #require(outcome.json?["usable"] as? [[UInt64]])
        #expect(usable == [[0, 0xfedf_ffff], [0xfef0_0000, 0x7f_ffff_ffff]])
    }

    @Test func regionsFromASysfsTreeNameTheirGroup() throws {
        let dir = try TemporaryDirectory()
        try dir.write("sys/kernel/iommu_groups/7/reserved_regions", "0x00000000fee00000 0x00000000feefffff msi\n")
        let outcome = try PolicyCtl.run("regions", "--sysfs-root", dir.path, "--group", "7", "--json")
        let regions = try #require(outcome.json?["regions"] as? [[String: Any]])
        #expect(regions.first?["source"] as? String == "sysfs group 7")
        #expect(regions.first?["group"] as? Int == 7)
    }
}

@Suite struct PolicyCtlBadInputTests {
    static let cases: [[String]] = [
        ["check", "--profile", "x86-intel", "--group", "0", "--iova", "0xzz", "--size", "0x1000"],
        ["check", "--profile", "x86-intel", "--group", "0", "--iova", "-5", "--size", "0x1000"],
        ["check", "--profile", "x86-intel", "--group", "0", "--iova", "0x1000", "--size", "18446744073709551616"],
        ["check", "--profile", "x86-intel", "--iova", "0x1000", "--size", "0x1000"],
        ["check", "--profile", "x86-intel", "--group", "9", "--iova", "0x1000", "--size", "0x1000"],
        ["check", "--profile", "sparc", "--group", "0", "--iova", "0x1000", "--size", "0x1000"],
        [
            "check", "--profile", "x86-intel", "--sysfs-root", "/", "--group", "0", "--iova", "0x1000", "--size",
            "0x1000",
        ],
        ["check", "--profile", "x86-intel", "--group", "0", "--iova", "0x1000", "--size", "0x1000", "--flags", "x"],
        [
            "check", "--profile", "x86-amd", "--aperture-bits", "39", "--group", "0", "--iova", "0x1000", "--size",
            "0x1000",
        ],
        [
            "check", "--profile", "x86-intel", "--config", "/nonexistent/policy.toml", "--group", "0", "--iova", "0",
            "--size", "1",
        ],
        ["ranges", "--profile", "x86-intel"],
        ["regions", "--bogus"],
        ["frobnicate"],
    ]

    @Test(arguments: cases)
    func badInputExits2WithOneLineOnStderr(_ arguments: [String]) throws {
        let outcome = try PolicyCtl.run(arguments)
        #expect(outcome.status == 2)
        #expect(outcome.stderr.split(separator: "\n").count == 1, "\(outcome.stderr)")
        #expect(outcome.stdout.isEmpty)
    }

    @Test func anInvalidConfigExits2AndNamesTheLine() throws {
        let dir = try TemporaryDirectory()
        let config = try dir.write("policy.toml", "[defaults]\nrelaxable = \"sometimes\"\n")
        let outcome = try PolicyCtl.run("regions", "--profile", "x86-intel", "--config", config)
        #expect(outcome.status == 2)
        #expect(outcome.stderr.contains("\(config) line 2"))
    }

    @Test func helpExits0() throws {
        let outcome = try PolicyCtl.run("check", "--help")
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("--iova"))
    }
}
