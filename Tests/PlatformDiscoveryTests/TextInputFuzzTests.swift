import IOMMUCore
import PlatformDiscovery
import TestSupport
import Testing

/// Mutates valid text: flips, inserts and deletes bytes, and splices in interesting tokens.
func mutate(_ text: String, _ rng: inout SplitMix64) -> [UInt8] {
    var bytes = Array(text.utf8)
    let tokens = [
        "0x", "ffffffffffffffff", "-", " ", "\n", "=", "[[", "]]", "[", "]", "{", "}", ".", ",", "\\", "\"", "0",
        "\u{0}", "\u{1}", "é", "msi", "#", "'''", "\"\"\"", "inf", "nan", "+", "1979-05-27T07:32:00Z", "true",
    ]
    for _ in 0..<Int.random(in: 1...6, using: &rng) {
        let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &rng)
        switch Int.random(in: 0..<4, using: &rng) {
        case 0 where !bytes.isEmpty: bytes[position] = UInt8.random(in: 0...255, using: &rng)
        case 1 where !bytes.isEmpty: bytes.remove(at: position)
        case 2: bytes.insert(contentsOf: Array(tokens.randomElement(using: &rng)!.utf8), at: position)
        default: bytes = Array(bytes.prefix(position))
        }
    }
    return bytes
}

@Suite struct TextInputFuzzTests {
    @Test func mutatedConfigFilesNeverCrashTheParser() {
        var rng = SplitMix64(state: 0x1f2e_3d4c)
        var rejected = 0
        for _ in 0..<6000 {
            let text = String(decoding: mutate(PolicyConfigTests.example, &rng), as: UTF8.self)
            if case .failure(let error) = PolicyConfig.parse(text, path: "fuzz.toml") {
                rejected += 1
                #expect(!error.diagnostics.isEmpty)
                #expect(error.diagnostics.allSatisfy { $0.location != nil })
            }
        }
        #expect(rejected > 0)
    }

    @Test func mutatedSysfsFilesNeverCrashDiscoveryAndOtherGroupsSurvive() throws {
        var rng = SplitMix64(state: 0x5eed)
        let good = [
            SysfsFixture.region(0, 0xff_ffff, "direct-relaxable"), SysfsFixture.region(0xfee0_0000, 0xfeef_ffff, "msi"),
        ].joined(separator: "\n")
        let resource = "0x00000000fe800000 0x00000000fe8fffff 0x0000000000040200\n0x0 0x0 0x0\n"
        let iomem = "80000000-dfffffff : PCI Bus 0000:00\n  a0000000-a00fffff : PCI Bus 0000:01\n"
        for _ in 0..<150 {
            let f = try SysfsFixture()
            try f.group(0, regions: [SysfsFixture.region(0xfee0_0000, 0xfeef_ffff, "msi")], devices: ["0000:00:01.0"])
            try f.write("sys/kernel/iommu_groups/1/reserved_regions", mutate(good, &rng))
            try f.pci("0000:00:02.0", group: 1, classCode: 0x02_0000)
            try f.write("sys/bus/pci/devices/0000:00:02.0/resource", mutate(resource, &rng))
            try f.write("sys/bus/pci/devices/0000:00:02.0/class", mutate("0x020000\n", &rng))
            try f.write("proc/iomem", mutate(iomem, &rng))
            let result = SysfsDiscovery.discover(files: DiskFileSource(root: f.root))
            #expect(result.database.regions(group: 0)?.contains { $0.kind == .msi } == true)
        }
    }
}
