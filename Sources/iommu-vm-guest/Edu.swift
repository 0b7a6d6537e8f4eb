#if canImport(Glibc)
    import Glibc
#endif

/// QEMU's `edu` device (hw/misc/edu.c, docs/specs/edu.rst) driven through a VFIO device fd:
/// its DMA engine copies between an IOVA and a 4 KiB buffer inside the device, so a copy in
/// and back out proves that the IOMMU translates the IOVAs to the memory the tenant mapped.
struct Edu {
    static let vendorDevice = "1234:11e8"
    /// Register offsets in BAR0.
    static let identification: UInt64 = 0x00
    static let liveness: UInt64 = 0x04
    static let dmaSource: UInt64 = 0x80
    static let dmaDestination: UInt64 = 0x88
    static let dmaCount: UInt64 = 0x90
    static let dmaCommand: UInt64 = 0x98
    /// Command bits: start, direction (set: device buffer to RAM), raise an interrupt.
    static let commandRun: UInt32 = 0x1
    static let commandToRAM: UInt32 = 0x2
    /// The device-side address of its DMA buffer, and the buffer's size.
    static let bufferAddress: UInt64 = 0x40000
    static let bufferSize: UInt64 = 4096
    /// edu masks DMA addresses to 28 bits (its dma_mask property's default).
    static let addressMask: UInt64 = (1 << 28) - 1

    let device: Int32
    let bar0: DeviceRegion
    let config: DeviceRegion

    init(device: Int32) throws(KernelError) {
        self.device = device
        bar0 = try DeviceRegion(device: device, index: DeviceRegion.bar0)
        config = try DeviceRegion(device: device, index: DeviceRegion.config)
    }

    func read32(_ register: UInt64) throws(KernelError) -> UInt32 {
        var value: UInt32 = 0
        let count = pread(device, &value, 4, off_t(bar0.offset + register))
        guard count == 4 else { throw KernelError(call: "pread BAR0+\(hex(register))", errno: count < 0 ? errno : EIO) }
        return UInt32(littleEndian: value)
    }

    /// edu takes 4- and 8-byte accesses; a 4-byte write to a 64-bit DMA register sets it to the
    /// zero-extended value, which is all a 28-bit IOVA needs.
    func write32(_ register: UInt64, _ value: UInt32) throws(KernelError) {
        var little = value.littleEndian
        let count = pwrite(device, &little, 4, off_t(bar0.offset + register))
        guard count == 4 else {
            throw KernelError(call: "pwrite BAR0+\(hex(register))", errno: count < 0 ? errno : EIO)
        }
    }

    /// The PCI command register (config offset 4), through the config region.
    func command() throws(KernelError) -> UInt16 {
        var value: UInt16 = 0
        let count = pread(device, &value, 2, off_t(config.offset + 4))
        guard count == 2 else { throw KernelError(call: "pread config+0x4", errno: count < 0 ? errno : EIO) }
        return UInt16(littleEndian: value)
    }

    /// Sets memory-space decoding and bus mastering: without bus mastering the device's DMA
    /// never reaches the IOMMU.
    func enableBusMaster() throws(KernelError) -> UInt16 {
        var value = (try command() | 0x6).littleEndian
        let count = pwrite(device, &value, 2, off_t(config.offset + 4))
        guard count == 2 else { throw KernelError(call: "pwrite config+0x4", errno: count < 0 ? errno : EIO) }
        return try command()
    }

    /// Runs one transfer and polls the command register until the engine is idle (edu starts it
    /// from a timer 100 ms after the command). Returns the milliseconds it took.
    @discardableResult
    func transfer(from source: UInt64, to destination: UInt64, count: UInt64, toRAM: Bool) throws -> Int {
        precondition(count <= Self.bufferSize)
        try write32(Self.dmaSource, UInt32(truncatingIfNeeded: source))
        try write32(Self.dmaDestination, UInt32(truncatingIfNeeded: destination))
        try write32(Self.dmaCount, UInt32(count))
        try write32(Self.dmaCommand, Self.commandRun | (toRAM ? Self.commandToRAM : 0))
        for waited in 0..<500 {
            if try read32(Self.dmaCommand) & Self.commandRun == 0 { return waited * 10 }
            usleep(10_000)
        }
        throw KernelError(call: "edu DMA did not complete in 5 s", errno: ETIMEDOUT)
    }

    /// The most one transfer moves here. QEMU 7.2's edu (Debian 12) checks that the transfer's
    /// end lies strictly inside the buffer and calls hw_error, which aborts QEMU, for a full
    /// 4 KiB transfer at 0x40000 (fixed in later QEMUs); 2 KiB transfers stay clear of it.
    static let chunk: UInt64 = 0x800

    /// RAM (IOVA) → device buffer → RAM (IOVA), in `chunk`-sized transfers each way through
    /// the start of the device buffer. Returns the milliseconds the engine took.
    func copy(from source: UInt64, to destination: UInt64, count: UInt64) throws -> Int {
        var took = 0
        var done: UInt64 = 0
        while done < count {
            let length = min(Self.chunk, count - done)
            took += try transfer(from: source + done, to: Self.bufferAddress, count: length, toRAM: false)
            took += try transfer(from: Self.bufferAddress, to: destination + done, count: length, toRAM: true)
            done += length
        }
        return took
    }
}
