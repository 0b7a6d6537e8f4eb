import ArgumentParser
import PlatformDiscovery

/// The options that choose a platform, shared by `iommu-policyctl` and `iommu-policyd`.
public struct PlatformOptions: ParsableArguments {
    @Option(name: .customLong("sysfs-root"), help: "Discover the platform below this root (for example /).")
    public var sysfsRoot: String?

    @Option(help: "Use a built-in platform profile: x86-intel, x86-amd, arm64-smmuv3.")
    public var profile: String?

    @Option(name: .customLong("aperture-bits"), help: "The profile's aperture width (x86-intel: 39 or 48).")
    public var apertureBits: Int?

    @Option(name: .customLong("profile-groups"), help: "How many IOMMU groups the profile has, numbered from 0.")
    public var profileGroups: Int = 1

    @Option(help: "The policy file (TOML).")
    public var config: String?

    public init() {}

    public mutating func validate() throws {
        if sysfsRoot != nil && profile != nil {
            throw ValidationError("--sysfs-root and --profile exclude each other")
        }
        if profile == nil && (apertureBits != nil || profileGroups != 1) {
            throw ValidationError("--aperture-bits and --profile-groups need --profile")
        }
    }

    /// The platform these options name; `fallback` when neither --sysfs-root nor --profile is given.
    public func source(fallback: PlatformSource) throws(PlatformOptionsError) -> PlatformSource {
        if let profile {
            guard let known = PlatformProfile(rawValue: profile) else {
                throw PlatformOptionsError(description: ProfileError.unknown(profile).description)
            }
            return .profile(known, .init(groups: profileGroups, apertureBits: apertureBits))
        }
        if let sysfsRoot { return .sysfs(root: sysfsRoot) }
        return fallback
    }
}

public struct PlatformOptionsError: Error, CustomStringConvertible {
    public var description: String
}
