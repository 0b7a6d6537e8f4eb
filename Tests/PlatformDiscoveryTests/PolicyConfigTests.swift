import IOMMUCore
import PlatformDiscovery
import Testing

@Suite struct PolicyConfigTests {
    static let example = """
        # The example from the documentation.
        [defaults]
        max_mappings = 65535        # per tenant session, as VFIO's dma_entry_limit
        max_bytes = "64G"           # mapped bytes per tenant
        relaxable = "deny"

        [[reserved]]
        first = 0x1000_0000
        last  = 0x1fff_ffff
        kind  = "reserved"
        groups = [7]
        comment = "firmware scratch"

        [[reserved]]
        first = "0xffff_ffff_ffff_f000"
        last = "0xffff_ffff_ffff_ffff"

        [[tenant]]
        uid = 1000
        groups = [7, 8]
        max_mappings = 4096

        [[tenant]]
        gid = 107
        max_bytes = "2G"
        relaxable = "allow"
        """

    func parse(_ text: String) -> Result<PolicyConfig, ConfigError> {
        PolicyConfig.parse(text, path: "/etc/iommu-policyd/policy.toml")
    }

    @Test func theDocumentedExampleParses() throws {
        let config = try parse(Self.example).get()
        #expect(config.defaults.maxMappings == 65535)
        #expect(config.defaults.maxBytes == 64 << 30)
        #expect(config.defaults.relaxable == .deny)
        #expect(config.reserved.count == 2)
        #expect(config.reserved[0].range == IOVARange(first: 0x1000_0000, last: 0x1fff_ffff))
        #expect(config.reserved[0].groups == [7])
        #expect(config.reserved[0].comment == "firmware scratch")
        #expect(config.reserved[0].line == 7)
        #expect(config.reserved[1].range == IOVARange(first: 0xffff_ffff_ffff_f000, last: UInt64.max))
        #expect(config.reserved[1].groups == nil)
        #expect(config.reserved[1].kind == .reserved)
        #expect(config.tenants.map(\.line) == [18, 23])
    }

    @Test func tenantRulesMatchInOrderByUidAndGid() throws {
        let config = try parse(Self.example).get()
        let alice = try #require(config.policy(uid: 1000, gid: 1000, daemonUID: 0))
        #expect(alice.groups == .only([7, 8]))
        #expect(alice.maxMappings == 4096)
        #expect(alice.maxBytes == 64 << 30)
        #expect(alice.origin == "/etc/iommu-policyd/policy.toml:18")
        let kvm = try #require(config.policy(uid: 2000, gid: 107, daemonUID: 0))
        #expect(kvm.groups == .any)
        #expect(kvm.maxBytes == 2 << 30)
        #expect(kvm.relaxable == .allow)
        #expect(config.policy(uid: 2000, gid: 100, daemonUID: 0) == nil)
        // With rules present, root is a tenant only if a rule says so.
        #expect(config.policy(uid: 0, gid: 0, daemonUID: 0) == nil)
    }

    @Test func withoutTenantRulesOnlyTheDaemonsUidAndRootAreTenants() {
        let config = PolicyConfig(path: "none")
        #expect(config.policy(uid: 0, gid: 0, daemonUID: 500)?.groups == .any)
        #expect(config.policy(uid: 500, gid: 500, daemonUID: 500) != nil)
        #expect(config.policy(uid: 501, gid: 500, daemonUID: 500) == nil)
    }

    @Test func reservedEntriesBecomeRegionsNamingTheFileAndLine() throws {
        let config = try parse(Self.example).get()
        var db = PlatformDatabase()
        for id: UInt32 in [7, 8] { db.addGroup(IOMMUGroup(id: id, aperture: .all, apertureSource: "test")) }
        #expect(config.apply(to: &db).isEmpty)
        let scratch = db.regions(group: 7)!.filter { $0.owner == .config }
        #expect(
            scratch.map(\.source) == [
                "config /etc/iommu-policyd/policy.toml:7", "config /etc/iommu-policyd/policy.toml:14",
            ])
        #expect(db.regions(group: 8)!.filter { $0.owner == .config }.count == 1)
    }

    @Test func aReservedEntryForAMissingGroupIsReportedAndSkipped() throws {
        let config = try parse(Self.example).get()
        var db = PlatformDatabase()
        db.addGroup(IOMMUGroup(id: 8, aperture: .all, apertureSource: "test"))
        let diagnostics = config.apply(to: &db)
        #expect(diagnostics.map(\.location) == ["line 7"])
    }

    @Test func aTopHalfAddressAsATOMLIntegerIsAParseErrorWithItsLine() {
        let error = parse("[[reserved]]\nfirst = 0\nlast = 0xffff_ffff_ffff_f000\n").failure
        #expect(error?.diagnostics.first?.location == "line 3")
    }

    @Test func everyProblemIsReportedWithItsLine() {
        let text = """
            [defaults]
            max_mapings = 5
            relaxable = "maybe"

            [[reserved]]
            first = 0x2000
            last = 0x1000

            [[reserved]]
            last = 0x1000
            kind = "outside-aperture"

            [[tenant]]
            groups = [1]

            [[tenant]]
            uid = -1
            max_bytes = "lots"
            """
        let lines = parse(text).failure?.diagnostics.compactMap(\.location) ?? []
        #expect(lines == ["line 2", "line 3", "line 7", "line 9", "line 11", "line 13", "line 17", "line 18"])
    }

    @Test func sizesAcceptSuffixesHexAndPlainIntegers() throws {
        for (text, bytes): (String, UInt64) in [
            ("\"512M\"", 512 << 20), ("4096", 4096), ("\"0x1000\"", 0x1000), ("\"1T\"", 1 << 40),
        ] {
            let config = try parse("[defaults]\nmax_bytes = \(text)\n").get()
            #expect(config.defaults.maxBytes == bytes)
        }
        #expect(parse("[defaults]\nmax_bytes = \"99999999999P\"\n").failure != nil)
    }

    @Test func anUnknownTopLevelTableIsAnError() {
        #expect(parse("[defualts]\nmax_bytes = 1\n").failure?.diagnostics.first?.location == "line 1")
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

@Suite struct PlatformProfileTests {
    @Test func intelHasTheMSIWindowAndAChoiceOfAperture() throws {
        let db = try PlatformProfile.x86Intel.database(.init(apertureBits: 39))
        #expect(db.groupIDs == [0])
        #expect(
            db.usableRanges(groups: [0], relaxable: .deny) == [
                IOVARange(first: 0, last: 0xfedf_ffff)!, IOVARange(first: 0xfef0_0000, last: 0x7f_ffff_ffff)!,
            ])
        #expect(try PlatformProfile.x86Intel.database().groups[0]?.aperture.last == 0xffff_ffff_ffff)
        #expect(throws: ProfileError.self) { try PlatformProfile.x86Intel.database(.init(apertureBits: 52)) }
    }

    @Test func amdHasTheHyperTransportHole() throws {
        let db = try PlatformProfile.x86AMD.database()
        let regions = db.regions(group: 0)!.map { "\($0.kind.rawValue) \($0.range) \($0.source)" }
        #expect(
            regions == [
                "msi 0xfee00000-0xfeefffff profile x86-amd", "reserved 0xfd00000000-0xffffffffff profile x86-amd",
                "outside-aperture 0x1000000000000-0xffffffffffffffff profile x86-amd",
            ])
    }

    @Test func armHasASoftwareMSIWindow() throws {
        let db = try PlatformProfile.arm64SMMUv3.database(.init(groups: 3))
        #expect(db.groupIDs == [0, 1, 2])
        #expect(db.regions(group: 2)!.first?.kind == .swMSI)
        #expect(db.regions(group: 2)!.first?.range == IOVARange(first: 0x800_0000, last: 0x80f_ffff))
        #expect(db.usableRanges(groups: [0, 2], relaxable: .deny).first == IOVARange(first: 0, last: 0x7ff_ffff))
    }
}

@Suite struct ShippedConfigTests {
    @Test func theShippedPolicyFileParsesWithTheDocumentedDefaults() throws {
        // Tests/PlatformDiscoveryTests/ -> repository root -> Config/policy.toml
        let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
        let path = "/\(root)/Config/policy.toml"
        let bytes = try #require(DiskFileSource.readFile(.init(path)))
        let config = try PolicyConfig.parse(String(decoding: bytes, as: UTF8.self), path: path).get()
        #expect(config.defaults == PolicyConfig.Defaults())
        #expect(config.reserved.isEmpty)
        #expect(config.tenants.isEmpty)
    }
}

@Suite struct TOMLPrecheckTests {
    /// toml++ asserted (aborting the process) on a non-ASCII bare key; found by the fuzz test.
    @Test func aNonASCIICharacterInATableNameIsAnErrorNotAnAbort() {
        let text = "# comment é is fine\n[\u{FFFD}efaults]\nmax_bytes = 1\n"
        let error = PolicyConfig.parse(text, path: "p.toml").failure
        #expect(error?.diagnostics.first?.location == "line 2")
    }

    @Test func nonASCIIInsideStringsAndCommentsIsAccepted() throws {
        let text = "[[reserved]] # é\nfirst = 0\nlast = 0xfff\ncomment = \"scratch é \\\" ü\"\n"
        #expect(try PolicyConfig.parse(text, path: "p.toml").get().reserved.first?.comment == "scratch é \" ü")
        let multiline = "[[reserved]]\nfirst = 0\nlast = 0xfff\ncomment = '''\nä\n'''\n"
        #expect(try PolicyConfig.parse(multiline, path: "p.toml").get().reserved.count == 1)
    }

    /// toml++ asserted on `[=a]` and `[[)a]]`; found by the fuzz test.
    @Test(arguments: ["[=tenant]", "[[)reserved]]", "  [ =a]", "[[]]"])
    func aTableHeaderThatDoesNotStartWithAKeyIsAnError(_ header: String) {
        let error = PolicyConfig.parse("[defaults]\n\n\(header)\nuid = 1\n", path: "p.toml").failure
        #expect(error?.diagnostics.first?.location == "line 3")
    }

    @Test func quotedAndSpacedTableHeadersStillParse() throws {
        #expect(
            try PolicyConfig.parse("[ \"defaults\" ]\nmax_bytes = 7\n", path: "p.toml").get().defaults.maxBytes == 7)
        #expect(try PolicyConfig.parse("\n[[ tenant ]]\nuid = 5\n", path: "p.toml").get().tenants.first?.line == 2)
    }

    @Test func controlCharactersAreRefusedWithTheirLine() {
        let error = PolicyConfig.parse("[defaults]\nmax_bytes = 1\u{1}\n", path: "p.toml").failure
        #expect(error?.diagnostics.first?.location == "line 2")
    }
}
