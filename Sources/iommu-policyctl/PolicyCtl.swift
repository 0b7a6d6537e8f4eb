import ArgumentParser
import IOMMUCore
import PlatformDiscovery

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
        subcommands: [Regions.self, Ranges.self, Check.self]
    )

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

struct PlatformOptions: ParsableArguments {
    @Option(name: .customLong("sysfs-root"), help: "Discover the platform below this root (default: /).")
    var sysfsRoot: String?

    @Option(help: "Use a built-in platform profile instead of discovery: x86-intel, x86-amd, arm64-smmuv3.")
    var profile: String?

    @Option(name: .customLong("aperture-bits"), help: "The profile's aperture width (x86-intel: 39 or 48).")
    var apertureBits: Int?

    @Option(name: .customLong("profile-groups"), help: "How many IOMMU groups the profile has, numbered from 0.")
    var profileGroups: Int = 1

    @Option(help: "The policy file (TOML) whose reserved regions and defaults apply.")
    var config: String?

    mutating func validate() throws {
        if sysfsRoot != nil && profile != nil {
            throw ValidationError("--sysfs-root and --profile exclude each other")
        }
        if profile == nil && (apertureBits != nil || profileGroups != 1) {
            throw ValidationError("--aperture-bits and --profile-groups need --profile")
        }
    }

    func load() throws -> LoadedPlatform {
        let source: PlatformSource
        if let profile {
            guard let known = PlatformProfile(rawValue: profile) else {
                throw UsageError(ProfileError.unknown(profile).description)
            }
            source = .profile(known, .init(groups: profileGroups, apertureBits: apertureBits))
        } else {
            source = .sysfs(root: sysfsRoot ?? "/")
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

        @OptionGroup var platform: PlatformOptions
        @Option(help: "An attached group; repeat for several (the usable ranges are the intersection).")
        var group: [UInt32] = []
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if group.isEmpty { throw ValidationError("at least one --group is required") }
        }

        func run() throws {
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

        func parseFlags() throws -> UInt32 {
            switch flags {
            case "r": return DMAProtection.read.rawValue
            case "w": return DMAProtection.write.rawValue
            case "rw", "wr": return DMAProtection.readWrite.rawValue
            default:
                guard let raw = NumberParser.uint64(flags), let value = UInt32(exactly: raw) else {
                    throw UsageError("--flags must be r, w, rw or a number, not \"\(flags)\"")
                }
                return value
            }
        }

        func run() throws {
            let rawFlags = try parseFlags()
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
