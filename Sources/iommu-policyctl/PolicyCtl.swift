import ArgumentParser
import IOMMUCore
import PlatformDiscovery
import PolicyClient
import PolicyCommandLine
import SystemPackage
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

/// The offline commands' flags, exit codes and JSON keys are a contract other tools rely on:
/// exit 0 allowed (or listed), 1 denied, 2 bad usage or bad input.
@main
struct PolicyCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iommu-policyctl",
        abstract: "Inspect reserved IOVA regions and check DMA mappings against iommu-policyd's policy.",
        subcommands: [Regions.self, Ranges.self, Check.self, Map.self, Explain.self]
    )

    @OptionGroup var tenant: TenantSocketOptions

    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            if let exitCode = error as? ExitCode { Glibc.exit(exitCode.rawValue) }
            // One line on stderr, then exit 2, for every kind of bad usage or input.
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            printError("iommu-policyctl: \(message)")
            Glibc.exit(2)
        }
    }
}

func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// An error that maps to exit status 2 with a one-line message.
struct UsageError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Parses `0x…` hex or decimal.
struct Number: ExpressibleByArgument {
    var value: UInt64
    init?(argument: String) {
        guard let value = NumberParser.uint64(argument) else { return nil }
        self.value = value
    }
    static var defaultValueDescription: String { "a number, 0x-prefixed hex or decimal" }
}

extension PlatformOptions {
    func load() throws -> LoadedPlatform {
        let source: PlatformSource
        do {
            source = try self.source(fallback: .sysfs(root: "/"))
        } catch {
            throw UsageError(error.description)
        }
        switch PlatformLoader.load(source, configPath: config) {
        case .success(let loaded):
            for diagnostic in loaded.diagnostics { printError(diagnostic.description) }
            return loaded
        case .failure(let error):
            for diagnostic in error.diagnostics.dropFirst() { printError(diagnostic.description) }
            throw UsageError(error.diagnostics.first?.description ?? "cannot load the platform")
        }
    }
}

func requireGroups(_ groups: [UInt32], in database: PlatformDatabase) throws {
    for group in groups where database.groups[group] == nil {
        let known = database.groupIDs.map(String.init).joined(separator: ", ")
        throw UsageError("no IOMMU group \(group) (known: \(known.isEmpty ? "none" : known))")
    }
}

extension PolicyCtl {
    struct Regions: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List every reserved region with its kind, first and last address, and source.")

        @OptionGroup var platform: PlatformOptions
        @Option(help: "Only the regions that apply to this group.") var group: UInt32?
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let loaded = try platform.load()
            let regions: [ReservedRegion]
            if let group {
                try requireGroups([group], in: loaded.database)
                regions = loaded.database.regions(group: group) ?? []
            } else {
                regions = loaded.database.allRegions
            }
            if json {
                print(JSONValue.object([("regions", .array(regions.map(\.json)))]).rendered)
                return
            }
            let rows = regions.map { region in
                [
                    region.group.map(String.init) ?? "all", region.kind.rawValue, Hex(region.range.first).description,
                    Hex(region.range.last).description, region.source,
                ]
            }
            printTable(header: ["GROUP", "KIND", "FIRST", "LAST", "SOURCE"], rows: rows)
        }
    }

    struct Ranges: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the IOVA ranges a tenant attached to the given groups may map.")

        @OptionGroup var tenant: TenantSocketOptions
        @OptionGroup var platform: PlatformOptions
        @Option(help: "An attached group; repeat for several (the usable ranges are the intersection).")
        var group: [UInt32] = []
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if group.isEmpty { throw ValidationError("at least one --group is required") }
            if tenant.socket != nil && (platform.profile != nil || platform.sysfsRoot != nil || platform.config != nil)
            {
                throw ValidationError("--socket asks the daemon; it excludes --profile, --sysfs-root and --config")
            }
        }

        func run() throws {
            if let socket = tenant.socket {
                let client = try connect(socket, json: json)
                let reply = try attached(client, group) { try client.ranges() }
                if json {
                    print(reply.json)
                } else {
                    printTable(
                        header: ["FIRST", "LAST"],
                        rows: reply.usable.map { [Hex($0.first).description, Hex($0.last).description] })
                }
                return
            }
            let loaded = try platform.load()
            try requireGroups(group, in: loaded.database)
            let relaxable = loaded.config.defaults.relaxable
            let usable = loaded.database.usableRanges(groups: group, relaxable: relaxable)
            let pageSize = PolicyEngine.minimumPageSize(platform: loaded.database, groups: group)
            if json {
                let value = JSONValue.object([
                    ("groups", .array(group.map { .uint(UInt64($0)) })),
                    ("relaxable", .string(relaxable.rawValue)),
                    ("min_page_size", .uint(pageSize)),
                    ("usable", .array(usable.map { .array([.uint($0.first), .uint($0.last)]) })),
                ])
                print(value.rendered)
                return
            }
            printTable(
                header: ["FIRST", "LAST", "SIZE"],
                rows: usable.map {
                    [
                        Hex($0.first).description, Hex($0.last).description,
                        $0.size.map { Hex($0).description } ?? "2^64",
                    ]
                })
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Decide one DMA map as a fresh tenant would. Exit 0 allowed, 1 denied, 2 bad usage.")

        @OptionGroup var platform: PlatformOptions
        @Option(help: "The group to attach first; repeat for several.") var group: [UInt32] = []
        @Option(help: "The IOVA.") var iova: Number
        @Option(help: "The size in bytes.") var size: Number
        @Option(help: "Access: r, w or rw, or the raw VFIO flag bits as a number.") var flags: String = "rw"
        @Option(help: "Decide as the config's tenant rule for this uid would (default: the config's defaults).")
        var uid: UInt32?
        @Option(help: "The gid to match tenant rules with, together with --uid.") var gid: UInt32?
        @Flag(help: "Print JSON: decision, errno, reason, conflict.") var json = false

        func validate() throws {
            if group.isEmpty { throw ValidationError("at least one --group is required") }
            if gid != nil && uid == nil { throw ValidationError("--gid needs --uid") }
        }

        func run() throws {
            let rawFlags = try flagBits(flags)
            let loaded = try platform.load()
            try requireGroups(group, in: loaded.database)
            let outcome = decide(loaded, flags: rawFlags)
            if json {
                print(DecisionReport.json(outcome).rendered)
            } else if let denial = outcome {
                print("deny: \(denial.errno.name) (\(denial.errno.rawValue)): \(denial.reason)")
            } else {
                print("allow")
            }
            if outcome != nil { throw ExitCode(1) }
        }

        private func decide(_ loaded: LoadedPlatform, flags: UInt32) -> Denial? {
            let tenant: TenantPolicy
            if let uid {
                guard let policy = loaded.config.policy(uid: uid, gid: gid ?? uid, daemonUID: getuid()) else {
                    return Denial(
                        .notATenant, .EPERM, "uid \(uid) matches no [[tenant]] rule in \(loaded.config.path)")
                }
                tenant = policy
            } else {
                let defaults = loaded.config.defaults
                tenant = TenantPolicy(
                    maxMappings: defaults.maxMappings, maxBytes: defaults.maxBytes, relaxable: defaults.relaxable,
                    origin: "\(loaded.config.path) defaults")
            }
            var state = TenantState()
            for id in group {
                switch PolicyEngine.decideAttach(group: id, platform: loaded.database, tenant: tenant, state: state) {
                case .success(let plan): state.commit(plan)
                case .failure(let denial): return denial
                }
            }
            let request = MapRequest(iova: iova.value, size: size.value, flags: flags)
            if case .failure(let denial) = PolicyEngine.decideMap(
                request, platform: loaded.database, tenant: tenant, state: state)
            {
                return denial
            }
            return nil
        }
    }
}

func printTable(header: [String], rows: [[String]]) {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    for row in all {
        let cells = row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
        }
        print(cells.joined(separator: "  "))
    }
}

/// `--socket PATH`: talk to a running daemon as a tenant instead of deciding offline. It may
/// stand before the subcommand (`iommu-policyctl --socket PATH ranges --group 0`) or after it.
struct TenantSocketOptions: ParsableArguments {
    @Option(help: "The daemon's tenant socket; the command then asks the running daemon as a tenant.")
    var socket: String?
}

/// Connects and negotiates; a daemon that refuses this uid is a denial (exit 1), a daemon that
/// cannot be reached is an error (exit 2).
func connect(_ path: String, json: Bool = false) throws -> PolicyClient {
    do {
        return try PolicyClient(path: path)
    } catch let error as PolicyError {
        reportDenial(error, json: json)
        throw ExitCode(1)
    } catch {
        throw UsageError("\(error)")
    }
}

/// Attaches `groups` (none: the daemon attaches a tenant's only group itself), then runs `body`.
/// A refused attach prints the refusal and exits 1, like any other denial.
func attached<T>(_ client: PolicyClient, _ groups: [UInt32], json: Bool = false, _ body: () throws -> T) throws -> T {
    do {
        for group in groups { try client.attach(group: group) }
        return try body()
    } catch let error as PolicyError {
        reportDenial(error, json: json)
        throw ExitCode(1)
    } catch let error as PolicyClientFailure {
        throw UsageError(error.description)
    }
}

func reportDenial(_ error: PolicyError, json: Bool) {
    if json {
        let conflict: JSONValue =
            error.conflict.map {
                .object([
                    ("kind", .string($0.kind)), ("first", .uint($0.first)), ("last", .uint($0.last)),
                    ("source", .string($0.source)),
                ])
            } ?? .null
        print(
            JSONValue.object([
                ("decision", .string("deny")), ("errno", .int(Int64(error.errno))),
                ("reason", .string(error.reason ?? error.description)), ("conflict", conflict),
            ]).rendered)
    } else {
        print("deny: \(error)")
    }
}

/// The map request options shared by `map` and `explain`.
struct MapRequestOptions: ParsableArguments {
    @Option(help: "A group to attach first; repeat for several. None: the daemon attaches a tenant's only group.")
    var group: [UInt32] = []
    @Option(help: "The IOVA.") var iova: Number
    @Option(help: "The size in bytes.") var size: Number
    @Option(help: "Access: r, w or rw, or the raw VFIO flag bits as a number.") var flags: String = "rw"

}

extension PolicyCtl {
    struct Map: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Map through a running daemon, as a tenant. Exit 0 mapped, 1 denied, 2 bad usage.",
            discussion: "The mapping lives as long as the session: until --hold runs out, then it is released.")

        @OptionGroup var tenant: TenantSocketOptions
        @OptionGroup var request: MapRequestOptions
        @Flag(help: "Back the mapping with a memfd of the mapping's size, passed to the daemon.") var memfd = false
        @Option(help: "Seconds to keep the session (and so the mapping) open after it is made.") var hold: Double = 0
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if tenant.socket == nil { throw ValidationError("map needs --socket") }
        }

        func run() throws {
            let flags = try flagBits(request.flags)
            let client = try connect(tenant.socket!, json: json)
            var backing: FileDescriptor?
            if memfd {
                do {
                    backing = try Memfd.create(name: "iommu-policyctl", size: request.size.value)
                } catch {
                    throw UsageError("memfd of \(request.size.value) bytes: \(error)")
                }
            }
            defer { try? backing?.close() }
            try attached(client, request.group, json: json) {
                try client.map(iova: request.iova.value, size: request.size.value, flags: flags, memory: backing)
            }
            print(json ? DecisionReport.json(nil).rendered : "mapped")
            if hold > 0 { usleep(useconds_t(min(hold, 3600) * 1_000_000)) }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask a running daemon how it would decide a map; changes nothing. Exit 0 allowed, 1 denied.")

        @OptionGroup var tenant: TenantSocketOptions
        @OptionGroup var request: MapRequestOptions
        @Flag(help: "Print JSON: decision, errno, reason, conflict.") var json = false

        func validate() throws {
            if tenant.socket == nil { throw ValidationError("explain needs --socket") }
        }

        func run() throws {
            let flags = try flagBits(request.flags)
            let client = try connect(tenant.socket!, json: json)
            let explanation = try attached(client, request.group, json: json) {
                try client.explain(iova: request.iova.value, size: request.size.value, flags: flags)
            }
            if json {
                print(explanation.json)
            } else {
                print(explanation.allowed ? "allow" : "deny: errno \(explanation.errno): \(explanation.reason)")
            }
            if !explanation.allowed { throw ExitCode(1) }
        }
    }
}

/// `--flags`: r, w, rw, or the raw VFIO flag bits as a number.
func flagBits(_ text: String) throws -> UInt32 {
    switch text {
    case "r": return DMAProtection.read.rawValue
    case "w": return DMAProtection.write.rawValue
    case "rw", "wr": return DMAProtection.readWrite.rawValue
    default:
        guard let raw = NumberParser.uint64(text), let value = UInt32(exactly: raw) else {
            throw UsageError("--flags must be r, w, rw or a number, not \"\(text)\"")
        }
        return value
    }
}
