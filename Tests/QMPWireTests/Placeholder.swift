import Testing
@testable import QMPWire
