// libsystemd, as the daemon's only way to talk to systemd.
// Import Glibc first: without it, other Swift files lose Glibc names such as SOCK_STREAM once
// this module is imported, and release builds fail.
#pragma clang module import SwiftGlibc
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
