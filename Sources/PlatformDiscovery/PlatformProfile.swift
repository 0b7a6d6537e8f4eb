import IOMMUCore

/// A complete built-in platform that needs no sysfs, so a layout meant for one machine can be
/// checked on another (an aarch64 guest on an x86 host).
public enum PlatformProfile: String, CaseIterable, Sendable {
    case x86Intel = "x86-intel"
    case x86AMD = "x86-amd"
    case arm64SMMUv3 = "arm64-smmuv3"

    public struct Options: Hashable, Sendable {
        /// How many IOMMU groups, numbered from 0.
        public var groups: Int
        /// The aperture's width; nil for the profile's default.
        public var apertureBits: Int?
        public init(groups: Int = 1, apertureBits: Int? = nil) {
            self.groups = groups
            self.apertureBits = apertureBits
        }
    }

    public var defaultApertureBits: Int { 48 }

    /// Widths the profile's IOMMU offers: VT-d's 39- and 48-bit (3- and 4-level) tables.
    public var supportedApertureBits: [Int] {
        switch self {
        case .x86Intel: [39, 48]
        case .x86AMD, .arm64SMMUv3: [48]
        }
    }

    public var summary: String {
        switch self {
        case .x86Intel: "Intel VT-d: MSI window 0xfee00000-0xfeefffff, 39- or 48-bit aperture"
        case .x86AMD: "AMD-Vi: MSI window, HyperTransport hole 0xfd00000000-0xffffffffff, 48-bit aperture"
        case .arm64SMMUv3: "Arm SMMUv3: software MSI window 0x8000000-0x80fffff, 48-bit aperture"
        }
    }

    private var regions: [(RegionKind, IOVARange)] {
        switch self {
        case .x86Intel:
            [(.msi, IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!)]
        case .x86AMD:
            [
                (.msi, IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!),
                (.reserved, IOVARange(first: 0xfd_0000_0000, last: 0xff_ffff_ffff)!),
            ]
        case .arm64SMMUv3:
            [(.swMSI, IOVARange(first: 0x800_0000, last: 0x80f_ffff)!)]
        }
    }

    public func database(_ options: Options = Options()) throws(ProfileError) -> PlatformDatabase {
        let bits = options.apertureBits ?? defaultApertureBits
        guard supportedApertureBits.contains(bits), let aperture = PageSizes.aperture(bits: bits) else {
            throw .unsupportedApertureBits(profile: self, bits: bits)
        }
        guard (1...4096).contains(options.groups) else { throw .badGroupCount(options.groups) }
        let source = "profile \(rawValue)"
        var database = PlatformDatabase()
        for id in 0..<UInt32(options.groups) {
            database.addGroup(
                IOMMUGroup(
                    id: id, aperture: aperture, apertureSource: source, pageSizes: PageSizes.x86, domainType: "DMA"))
        }
        for (kind, range) in regions {
            try! database.addRegion(
                ReservedRegion(kind: kind, range: range, owner: .profile, source: source, group: nil))
        }
        return database
    }
}

public enum ProfileError: Error, Hashable, Sendable, CustomStringConvertible {
    case unknown(String)
    case unsupportedApertureBits(profile: PlatformProfile, bits: Int)
    case badGroupCount(Int)

    public var description: String {
        switch self {
        case .unknown(let name):
            "unknown profile \"\(name)\" (known: \(PlatformProfile.allCases.map(\.rawValue).joined(separator: ", ")))"
        case .unsupportedApertureBits(let profile, let bits):
            "profile \(profile.rawValue) offers a \(profile.supportedApertureBits.map(String.init).joined(separator: "- or "))-bit aperture, not \(bits)"
        case .badGroupCount(let count):
            "a profile has 1 to 4096 groups, not \(count)"
        }
    }
}
