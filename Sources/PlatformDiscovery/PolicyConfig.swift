import IOMMUCore
import TOMLKit

/// The policy file (`policy.toml`): defaults, extra reserved regions and tenant rules.
///
/// Key names are a contract: they may be extended, never renamed. TOML integers are signed
/// 64-bit, so every key that holds an IOVA or a size also accepts a string
/// (`last = "0xffff_ffff_ffff_ffff"`); otherwise the top half of the space could not be written.
public struct PolicyConfig: Sendable, Hashable {
    public struct Defaults: Sendable, Hashable {
        public var maxMappings = TenantPolicy.defaultMaxMappings
        public var maxBytes = TenantPolicy.defaultMaxBytes
        public var relaxable = RelaxablePolicy.deny
        /// Concurrent tenant connections per uid.
        public var maxSessions = 16
        /// Seconds a new connection has to complete VERSION; 0 waits forever.
        public var handshakeTimeout = 10.0
        /// Seconds a negotiated session may stay silent; 0 (the default) waits forever, since a
        /// VMM's connection lives as long as its VM and may be quiet for hours.
        public var idleTimeout = 0.0
        /// Seconds the rest of a message may take once its first byte has arrived; 0 waits forever.
        public var messageTimeout = 5.0
        public init() {}
    }

    public struct Reserved: Sendable, Hashable {
        public var range: IOVARange
        public var kind: RegionKind
        /// nil: every group.
        public var groups: [UInt32]?
        public var comment: String?
        /// The line of its `[[reserved]]` header.
        public var line: Int
    }

    public struct TenantRule: Sendable, Hashable {
        public var uid: UInt32?
        public var gid: UInt32?
        public var groups: Set<UInt32>?
        public var maxMappings: Int?
        public var maxBytes: UInt64?
        public var relaxable: RelaxablePolicy?
        public var maxSessions: Int?
        public var line: Int

        func matches(uid: UInt32, gid: UInt32) -> Bool {
            (self.uid.map { $0 == uid } ?? true) && (self.gid.map { $0 == gid } ?? true)
        }
    }

    /// The path as given, used in region sources (`config /etc/iommu-policyd/policy.toml:12`).
    public var path: String
    public var defaults = Defaults()
    public var reserved: [Reserved] = []
    public var tenants: [TenantRule] = []
    /// Who may use the admin socket besides root: `[admin] uids = […]`, `gids = […]`.
    public var admin = Admin()

    public struct Admin: Sendable, Hashable {
        public var uids: Set<UInt32> = []
        public var gids: Set<UInt32> = []

        public init(uids: Set<UInt32> = [], gids: Set<UInt32> = []) {
            self.uids = uids
            self.gids = gids
        }

        /// Root always; others when their uid or primary gid is listed.
        public func permits(uid: UInt32, gid: UInt32) -> Bool {
            uid == 0 || uids.contains(uid) || gids.contains(gid)
        }
    }

    public init(path: String) {
        self.path = path
    }

    /// The policy for a connecting peer, identified by its kernel-reported uid and gid.
    ///
    /// Rules are tried in file order and the first whose `uid` and `gid` (each when given) match
    /// wins. With no `[[tenant]]` rule at all, the daemon's own uid and root are tenants that may
    /// attach any group. Nil means the peer is not a tenant.
    public func policy(uid: UInt32, gid: UInt32, daemonUID: UInt32) -> TenantPolicy? {
        if tenants.isEmpty {
            guard uid == 0 || uid == daemonUID else { return nil }
            return TenantPolicy(
                groups: .any, maxMappings: defaults.maxMappings, maxBytes: defaults.maxBytes,
                relaxable: defaults.relaxable, maxSessions: defaults.maxSessions, origin: "default tenant uid \(uid)")
        }
        guard let rule = tenants.first(where: { $0.matches(uid: uid, gid: gid) }) else { return nil }
        return TenantPolicy(
            groups: rule.groups.map { .only($0) } ?? .any,
            maxMappings: rule.maxMappings ?? defaults.maxMappings,
            maxBytes: rule.maxBytes ?? defaults.maxBytes,
            relaxable: rule.relaxable ?? defaults.relaxable,
            maxSessions: rule.maxSessions ?? defaults.maxSessions,
            origin: "\(path):\(rule.line)")
    }

    /// Adds the `[[reserved]]` regions to `database`, owned by `.config`. A region naming a
    /// group the platform lacks is reported and skipped.
    public func apply(to database: inout PlatformDatabase) -> [Diagnostic] {
        var diagnostics: [Diagnostic] = []
        for entry in reserved {
            let source = "config \(path):\(entry.line)"
            for group in entry.groups.map({ $0.map(Optional.some) }) ?? [nil] {
                let region = ReservedRegion(
                    kind: entry.kind, range: entry.range, owner: .config, source: source, group: group)
                do {
                    try database.addRegion(region)
                } catch {
                    diagnostics.append(
                        .atLine(.warning, file: path, entry.line, "\(error); region \(entry.range) skipped for it"))
                }
            }
        }
        return diagnostics
    }
}

/// Every problem in a config file, each with its line where one can be found.
public struct ConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    public var diagnostics: [Diagnostic]
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

extension PolicyConfig {
    static let defaultsKeys: Set<String> = [
        "max_mappings", "max_bytes", "relaxable", "max_sessions", "handshake_timeout", "idle_timeout",
        "message_timeout",
    ]
    static let reservedKeys: Set<String> = ["first", "last", "kind", "groups", "comment"]
    static let tenantKeys: Set<String> = [
        "uid", "gid", "groups", "max_mappings", "max_bytes", "relaxable", "max_sessions",
    ]

    /// Parses and validates the whole file; collects every error rather than stopping at the first.
    public static func parse(_ text: String, path: String) -> Result<PolicyConfig, ConfigError> {
        if let problem = TOMLPrecheck.firstProblem(in: text) {
            return .failure(ConfigError(diagnostics: [.atLine(.error, file: path, problem.line, problem.message)]))
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            return .failure(
                ConfigError(diagnostics: [.atLine(.error, file: path, error.source.begin.line, error.description)]))
        } catch {
            return .failure(ConfigError(diagnostics: [Diagnostic(.error, file: path, "\(error)")]))
        }
        var reader = ConfigReader(path: path, lines: LineIndex(text))
        let config = reader.read(table)
        return reader.errors.isEmpty ? .success(config) : .failure(ConfigError(diagnostics: reader.errors))
    }
}

/// Finds lines for TOMLKit values, which carry no source positions: the n-th `[[name]]`
/// header, and a key's line within a block.
struct LineIndex {
    let lines: [Substring]

    init(_ text: String) {
        lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    }

    /// 1-based lines of each `[[name]]` (or `[name]`) header, in order.
    func headers(_ name: String, array: Bool) -> [Int] {
        let header = array ? "[[\(name)]]" : "[\(name)]"
        return lines.indices.filter { index in
            // `[[ tenant ]]` is the same header as `[[tenant]]`.
            lines[index].filter { $0 != " " && $0 != "\t" }.hasPrefix(header)
        }.map { $0 + 1 }
    }

    /// The line of `key = …` at or after `start` (1-based), before the next header.
    func line(of key: String, after start: Int) -> Int {
        var index = start
        while index < lines.count {
            let line = lines[index].trimmingWhitespace()
            if line.hasPrefix("[") { break }
            if line.hasPrefix(key), line.dropFirst(key.count).trimmingWhitespace().hasPrefix("=") { return index + 1 }
            index += 1
        }
        return max(start, 1)
    }
}

private struct ConfigReader {
    let path: String
    let lines: LineIndex
    var errors: [Diagnostic] = []

    mutating func error(_ line: Int, _ message: String) {
        errors.append(.atLine(.error, file: path, line, message))
    }

    mutating func read(_ table: TOMLTable) -> PolicyConfig {
        var config = PolicyConfig(path: path)
        for key in table.keys where !["defaults", "reserved", "tenant", "admin"].contains(key) {
            let header = (lines.headers(key, array: false) + lines.headers(key, array: true)).min()
            error(header ?? lines.line(of: key, after: 0), "unknown key or table \"\(key)\"")
        }
        if let defaults = table["defaults"] {
            let line = lines.headers("defaults", array: false).first ?? 1
            if let defaults = defaults.table {
                config.defaults = readDefaults(defaults, line: line)
            } else {
                error(line, "\"defaults\" must be a table")
            }
        }
        if let admin = table["admin"] {
            let line = lines.headers("admin", array: false).first ?? 1
            if let admin = admin.table {
                checkKeys(admin, allowed: ["uids", "gids"], block: "[admin]", line: line)
                config.admin = PolicyConfig.Admin(
                    uids: readIDs(admin, "uids", line: line), gids: readIDs(admin, "gids", line: line))
            } else {
                error(line, "\"admin\" must be a table")
            }
        }
        config.reserved = readArray(table, "reserved") { reader, entry, line in reader.readReserved(entry, line: line) }
        config.tenants = readArray(table, "tenant") { reader, entry, line in reader.readTenant(entry, line: line) }
        return config
    }

    mutating func readArray<T>(
        _ table: TOMLTable, _ name: String, _ body: (inout ConfigReader, TOMLTable, Int) -> T?
    ) -> [T] {
        guard let value = table[name] else { return [] }
        let headers = lines.headers(name, array: true)
        guard let array = value.array else {
            error(lines.line(of: name, after: 0), "\"\(name)\" must be an array of tables ([[\(name)]])")
            return []
        }
        var items: [T] = []
        for (index, element) in array.enumerated() {
            let line = index < headers.count ? headers[index] : lines.line(of: name, after: 0)
            guard let entry = element.table else {
                error(line, "each \(name) entry must be a table")
                continue
            }
            if let item = body(&self, entry, line) { items.append(item) }
        }
        return items
    }

    mutating func checkKeys(_ table: TOMLTable, allowed: Set<String>, block: String, line: Int) {
        for key in table.keys where !allowed.contains(key) {
            error(
                lines.line(of: key, after: line),
                "unknown key \"\(key)\" in \(block) (known: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    mutating func readDefaults(_ table: TOMLTable, line: Int) -> PolicyConfig.Defaults {
        checkKeys(table, allowed: PolicyConfig.defaultsKeys, block: "[defaults]", line: line)
        var defaults = PolicyConfig.Defaults()
        if let value = readCount(table, "max_mappings", line: line) { defaults.maxMappings = value }
        if let value = readBytes(table, "max_bytes", line: line) { defaults.maxBytes = value }
        if let value = readRelaxable(table, line: line) { defaults.relaxable = value }
        if let value = readCount(table, "max_sessions", line: line) { defaults.maxSessions = value }
        if let value = readSeconds(table, "handshake_timeout", line: line) { defaults.handshakeTimeout = value }
        if let value = readSeconds(table, "idle_timeout", line: line) { defaults.idleTimeout = value }
        if let value = readSeconds(table, "message_timeout", line: line) { defaults.messageTimeout = value }
        return defaults
    }

    mutating func readReserved(_ table: TOMLTable, line: Int) -> PolicyConfig.Reserved? {
        checkKeys(table, allowed: PolicyConfig.reservedKeys, block: "[[reserved]]", line: line)
        let first = readAddress(table, "first", line: line, required: true)
        let last = readAddress(table, "last", line: line, required: true)
        var kind = RegionKind.reserved
        if let name = table["kind"] {
            if let parsed = name.string.flatMap(RegionKind.init(rawValue:)), parsed != .outsideAperture {
                kind = parsed
            } else {
                let allowed = RegionKind.allCases.filter { $0 != .outsideAperture }.map(\.rawValue)
                error(lines.line(of: "kind", after: line), "kind must be one of \(allowed.joined(separator: ", "))")
            }
        }
        let groups = readGroups(table, line: line)
        var comment: String?
        if let value = table["comment"] {
            comment = value.string
            if comment == nil { error(lines.line(of: "comment", after: line), "comment must be a string") }
        }
        guard let first, let last else { return nil }
        guard let range = IOVARange(first: first, last: last) else {
            error(lines.line(of: "last", after: line), "last \(Hex(last)) is below first \(Hex(first))")
            return nil
        }
        return PolicyConfig.Reserved(
            range: range, kind: kind, groups: groups.map { $0.sorted() }, comment: comment, line: line)
    }

    mutating func readTenant(_ table: TOMLTable, line: Int) -> PolicyConfig.TenantRule? {
        checkKeys(table, allowed: PolicyConfig.tenantKeys, block: "[[tenant]]", line: line)
        let uid = readID(table, "uid", line: line)
        let gid = readID(table, "gid", line: line)
        if table["uid"] == nil && table["gid"] == nil {
            error(line, "a [[tenant]] needs a uid, a gid or both")
            return nil
        }
        return PolicyConfig.TenantRule(
            uid: uid, gid: gid, groups: readGroups(table, line: line),
            maxMappings: readCount(table, "max_mappings", line: line),
            maxBytes: readBytes(table, "max_bytes", line: line), relaxable: readRelaxable(table, line: line), line: line
        )
    }

    // MARK: Values

    mutating func readAddress(_ table: TOMLTable, _ key: String, line: Int, required: Bool) -> UInt64? {
        guard let value = table[key] else {
            if required { error(line, "missing \"\(key)\"") }
            return nil
        }
        if let int = value.int, int >= 0 { return UInt64(int) }
        if let text = value.string, let number = NumberParser.uint64(text) { return number }
        error(
            lines.line(of: key, after: line),
            "\(key) must be a non-negative integer or a string such as \"0xffff_ffff_ffff_f000\"")
        return nil
    }

    mutating func readBytes(_ table: TOMLTable, _ key: String, line: Int) -> UInt64? {
        guard let value = table[key] else { return nil }
        if let int = value.int, int >= 0 { return UInt64(int) }
        if let text = value.string, let number = NumberParser.byteSize(text) { return number }
        error(lines.line(of: key, after: line), "\(key) must be a byte count such as 4096, \"0x1000\" or \"64G\"")
        return nil
    }

    mutating func readCount(_ table: TOMLTable, _ key: String, line: Int) -> Int? {
        guard let value = table[key] else { return nil }
        if let int = value.int, int >= 0, int <= Int(Int32.max) { return int }
        error(lines.line(of: key, after: line), "\(key) must be an integer from 0 to \(Int32.max)")
        return nil
    }

    mutating func readSeconds(_ table: TOMLTable, _ key: String, line: Int) -> Double? {
        guard let value = table[key] else { return nil }
        if let int = value.int, int >= 0 { return Double(int) }
        if let double = value.double, double >= 0, double.isFinite { return double }
        error(lines.line(of: key, after: line), "\(key) must be a non-negative number of seconds")
        return nil
    }

    mutating func readID(_ table: TOMLTable, _ key: String, line: Int) -> UInt32? {
        guard let value = table[key] else { return nil }
        if let int = value.int, let id = UInt32(exactly: int) { return id }
        error(lines.line(of: key, after: line), "\(key) must be an integer from 0 to \(UInt32.max)")
        return nil
    }

    mutating func readIDs(_ table: TOMLTable, _ key: String, line: Int) -> Set<UInt32> {
        guard let value = table[key] else { return [] }
        let ids = value.array.map { $0.compactMap { $0.int.flatMap { UInt32(exactly: $0) } } }
        guard let ids, ids.count == value.array?.count else {
            error(lines.line(of: key, after: line), "\(key) must be an array of ids from 0 to \(UInt32.max)")
            return []
        }
        return Set(ids)
    }

    mutating func readRelaxable(_ table: TOMLTable, line: Int) -> RelaxablePolicy? {
        guard let value = table["relaxable"] else { return nil }
        if let policy = value.string.flatMap(RelaxablePolicy.init(rawValue:)) { return policy }
        error(lines.line(of: "relaxable", after: line), "relaxable must be \"deny\" or \"allow\"")
        return nil
    }

    mutating func readGroups(_ table: TOMLTable, line: Int) -> Set<UInt32>? {
        guard let value = table["groups"] else { return nil }
        guard let array = value.array else {
            error(lines.line(of: "groups", after: line), "groups must be an array of group numbers")
            return nil
        }
        var groups = Set<UInt32>()
        for element in array {
            guard let id = element.int.flatMap({ UInt32(exactly: $0) }) else {
                error(lines.line(of: "groups", after: line), "groups must hold group numbers from 0 to \(UInt32.max)")
                return nil
            }
            groups.insert(id)
        }
        return groups
    }
}
