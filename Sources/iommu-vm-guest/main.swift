// The test client the VM rig (Tests/vm/run) runs inside its QEMU guest, so that the guest's
// /init stays a few lines:
//
//   iommu-vm-guest setup --uid U --gid G --policy PATH [--grant-edu]
//       (root) binds edu and pci-testdev to vfio-pci, gives the tenant pci-testdev's group
//       (and edu's with --grant-edu, for direct mode) and writes the daemon's policy file.
//   iommu-vm-guest scenario --mode daemon|direct --uid U --gid G --socket PATH --daemon-log PATH
//       (root, drops to U:G at once) runs issue 6's scenario and prints `N passed, N failed`.
//   iommu-vm-guest hold --mode M --socket PATH --group N --iova X
//       (internal) a tenant that maps X and waits to be killed.
//
// Exit status: 0 when every check passed, 1 when one failed, 2 on a usage or setup error.

#if canImport(Glibc)
    import Glibc
#endif

func parseOptions(_ arguments: ArraySlice<String>) -> [String: String]? {
    var options: [String: String] = [:]
    var rest = arguments[...]
    while let key = rest.popFirst() {
        guard key.hasPrefix("--") else { return nil }
        let name = String(key.dropFirst(2))
        if name.hasPrefix("grant-") {
            options[name] = "yes"
        } else {
            guard let value = rest.popFirst() else { return nil }
            options[name] = value
        }
    }
    return options
}

func number(_ text: String?) -> UInt64? {
    guard let text else { return nil }
    return text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
}

func usage(_ message: String) -> Never {
    say("iommu-vm-guest: \(message)")
    say("usage: iommu-vm-guest setup|scenario|hold [--option value ...] (see Sources/iommu-vm-guest/main.swift)")
    exit(2)
}

func setup(_ options: [String: String]) -> Int32 {
    guard let uid = number(options["uid"]), let gid = number(options["gid"]), let policy = options["policy"] else {
        usage("setup needs --uid, --gid and --policy")
    }
    do {
        let edu = try PCIDevice.find(Edu.vendorDevice)
        let testdev = try PCIDevice.find("1b36:0005")
        try edu.bindToVFIO()
        try testdev.bindToVFIO()
        // The differential check maps through pci-testdev's group as the tenant; only direct
        // mode lets the tenant open edu's group itself.
        var granted = [testdev.group]
        if options["grant-edu"] != nil { granted.append(edu.group) }
        for group in granted {
            guard chown("/dev/vfio/\(group)", uid_t(uid), gid_t(gid)) == 0 else {
                throw KernelError(call: "chown /dev/vfio/\(group)", errno: errno)
            }
        }
        try writeText(
            policy,
            """
            # Written by iommu-vm-guest setup: the scenario's tenant may attach edu's group only.
            [[tenant]]
            uid = \(uid)
            groups = [\(edu.group)]

            """)
        say(
            "setup: edu \(edu.address) group \(edu.group), pci-testdev \(testdev.address) group \(testdev.group), both on vfio-pci;"
                + " uid \(uid) owns /dev/vfio/{\(granted.map(String.init).joined(separator: ","))}")
        return 0
    } catch {
        say("setup: \(error)")
        return 2
    }
}

func scenario(_ options: [String: String]) -> Int32 {
    guard let mode = options["mode"].flatMap(Mode.init(rawValue:)), let uid = number(options["uid"]),
        let gid = number(options["gid"]), let socket = options["socket"], let log = options["daemon-log"]
    else { usage("scenario needs --mode daemon|direct, --uid, --gid, --socket and --daemon-log") }
    let run: Scenario
    do {
        run = try Scenario(
            options: .init(mode: mode, socket: socket, daemonLog: log, uid: UInt32(uid), gid: UInt32(gid)))
        try dropPrivileges(uid: UInt32(uid), gid: UInt32(gid))
    } catch {
        say("scenario: \(error)")
        say("0 passed, 1 failed")
        return 1
    }
    return run.run()
}

func hold(_ options: [String: String]) -> Int32 {
    guard let mode = options["mode"].flatMap(Mode.init(rawValue:)), let socket = options["socket"],
        let group = number(options["group"]), let iova = number(options["iova"])
    else { usage("hold needs --mode, --socket, --group and --iova") }
    return Scenario.hold(mode: mode, socket: socket, group: UInt32(group), iova: iova)
}

let arguments = CommandLine.arguments
guard arguments.count >= 2, let options = parseOptions(arguments.dropFirst(2)) else { usage("bad arguments") }
switch arguments[1] {
case "setup": exit(setup(options))
case "scenario": exit(scenario(options))
case "hold": exit(hold(options))
default: usage("unknown subcommand \(arguments[1])")
}
