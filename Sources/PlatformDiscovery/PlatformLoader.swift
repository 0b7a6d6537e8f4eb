import IOMMUCore
import SystemPackage

/// Where the platform comes from.
public enum PlatformSource: Sendable, Hashable {
    /// Discovery below a root (`/` on a real host, a fixture tree in tests).
    case sysfs(root: String)
    case profile(PlatformProfile, PlatformProfile.Options)
}

/// A platform database with the config applied, and everything said along the way.
public struct LoadedPlatform: Sendable {
    public var database: PlatformDatabase
    public var config: PolicyConfig
    public var diagnostics: [Diagnostic]
    /// What each source contributed, one line each.
    public var sources: [String]
}

public enum PlatformLoader {
    /// Discovers (or builds) the platform, then reads and applies the config file if one is
    /// named. A config that does not parse is an error; discovery problems are diagnostics.
    public static func load(_ source: PlatformSource, configPath: String?) -> Result<LoadedPlatform, ConfigError> {
        var config = PolicyConfig(path: "(built-in defaults)")
        if let configPath {
            guard let bytes = DiskFileSource.readFile(FilePath(configPath)) else {
                return .failure(ConfigError(diagnostics: [Diagnostic(.error, file: configPath, "cannot be read")]))
            }
            switch PolicyConfig.parse(String(decoding: bytes, as: UTF8.self), path: configPath) {
            case .success(let parsed): config = parsed
            case .failure(let error): return .failure(error)
            }
        }
        var loaded: LoadedPlatform
        switch source {
        case .sysfs(let root):
            let result = SysfsDiscovery.discover(files: DiskFileSource(root: root))
            loaded = LoadedPlatform(
                database: result.database, config: config, diagnostics: result.diagnostics, sources: result.sources)
        case .profile(let profile, let options):
            do {
                loaded = LoadedPlatform(
                    database: try profile.database(options), config: config, diagnostics: [],
                    sources: ["profile \(profile.rawValue): \(profile.summary)"])
            } catch {
                return .failure(ConfigError(diagnostics: [Diagnostic(.error, file: "profile", error.description)]))
            }
        }
        if configPath != nil {
            loaded.diagnostics += config.apply(to: &loaded.database)
            loaded.sources.append(
                "config \(config.path): \(config.reserved.count) reserved entries, \(config.tenants.count) tenant rules"
            )
        }
        return .success(loaded)
    }
}
