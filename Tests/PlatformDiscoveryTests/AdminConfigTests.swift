import PlatformDiscovery
import Testing

@Suite struct AdminConfigTests {
    func parse(_ text: String) -> Result<PolicyConfig, ConfigError> {
        PolicyConfig.parse(text, path: "policy.toml")
    }

    @Test func withoutAnAdminTableOnlyRootMayAdminister() throws {
        let config = try parse("").get()
        #expect(config.admin.permits(uid: 0, gid: 0))
        #expect(!config.admin.permits(uid: 1000, gid: 1000))
    }

    @Test func listedUidsAndGidsMayAdminister() throws {
        let config = try parse("[admin]\nuids = [1000]\ngids = [27]\n").get()
        #expect(config.admin.permits(uid: 1000, gid: 5))
        #expect(config.admin.permits(uid: 2000, gid: 27))
        #expect(!config.admin.permits(uid: 2000, gid: 5))
    }

    @Test func badAdminEntriesAreErrorsWithTheirLines() throws {
        let error = try #require(parse("[admin]\nuids = [\"root\"]\nextra = 1\n").failure)
        let lines = error.diagnostics.map(\.location)
        #expect(lines.contains("line 2"), "\(error)")
        #expect(lines.contains("line 3"), "\(error)")
        #expect(parse("admin = 3\n").failure != nil)
    }
}
