import QMPWire
import Testing

@Suite("QMPArguments accessors")
struct ArgumentTests {
    @Test func stringsAndBooleansAreReadAndMistypedOnesNameTheParameter() throws {
        let args = try arguments(#"{"name":"dev0","on":true,"off":false,"n":1}"#)
        #expect(try args.string("name") == "dev0")
        #expect(try args.bool("on") == true)
        #expect(try args.bool("off") == false)
        #expect(
            accessorError { () throws(QMPError) in try args.string("n") }
                == "Invalid parameter type for 'n', expected: string, got 1")
        // 1 is not true, whatever NSNumber's bridging thinks.
        #expect(
            accessorError { () throws(QMPError) in try args.bool("n") }
                == "Invalid parameter type for 'n', expected: boolean, got 1")
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("name") }
                == #"Parameter 'name' expects an integer: "dev0" has an invalid digit 'd'"#)
    }

    @Test func aMissingRequiredArgumentIsNamedAndAMissingOptionalOneIsNil() throws {
        let args = try arguments("{}")
        #expect(accessorError { () throws(QMPError) in try args.string("device") } == "Parameter 'device' is missing")
        #expect(accessorError { () throws(QMPError) in try args.uint64("iova") } == "Parameter 'iova' is missing")
        #expect(try args.optionalString("device") == nil)
        #expect(try args.optionalBool("force") == nil)
        #expect(try args.optionalUInt64("iova") == nil)
        #expect(try args.optionalUInt32("group") == nil)
        #expect(try args.optionalInt("delta") == nil)
        #expect(try args.optionalUInt32Array("groups") == nil)
    }

    @Test func optionalVariantsStillCheckTypesAndNullIsATypeError() throws {
        let args = try arguments(#"{"s":null,"b":"yes","u":-1}"#)
        #expect(
            accessorError { () throws(QMPError) in try args.optionalString("s") }
                == "Invalid parameter type for 's', expected: string, got null")
        #expect(
            accessorError { () throws(QMPError) in try args.optionalBool("b") }
                == #"Invalid parameter type for 'b', expected: boolean, got "yes""#)
        #expect(
            accessorError { () throws(QMPError) in try args.optionalUInt64("u") }
                == "Parameter 'u' expects a uint64, got negative -1")
    }

    @Test func uint64TakesTheWholeRangeAsJSONIntegers() throws {
        let args = try arguments(
            #"{"zero":0,"max":18446744073709551615,"i64max":9223372036854775807,"above":9223372036854775808,"#
                + #""p53":9007199254740993}"#)
        #expect(try args.uint64("zero") == 0)
        #expect(try args.uint64("max") == UInt64.max)
        #expect(try args.uint64("i64max") == UInt64(Int64.max))
        #expect(try args.uint64("above") == UInt64(Int64.max) + 1)
        // 2^53 + 1 is not a Double; it survives because Foundation keeps integers as integers.
        #expect(try args.uint64("p53") == 9_007_199_254_740_993)
    }

    @Test func uint64RefusesNegativesFractionsAndExponentsEvenWhenIntegral() throws {
        let args = try arguments(
            #"{"neg":-1,"min":-9223372036854775808,"frac":1.5,"one":1.0,"exp":1e3,"tiny":5e-324}"#)
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("neg") }
                == "Parameter 'neg' expects a uint64, got negative -1")
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("min") }
                == "Parameter 'min' expects a uint64, got negative -9223372036854775808")
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("frac") }
                == "Invalid parameter type for 'frac', expected: integer, got 1.5")
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("one") }
                == "Invalid parameter type for 'one', expected: integer, got 1.0")
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("exp") }
                == "Invalid parameter type for 'exp', expected: integer, got 1000.0")
        #expect(accessorError { () throws(QMPError) in try args.uint64("tiny") } != nil)
    }

    @Test func integersBeyondUInt64AreOutOfRangeNotSilentlyRounded() throws {
        // Foundation hands these over as NSDecimalNumber; they become Doubles, as in QEMU.
        let args = try arguments(
            #"{"two64":18446744073709551616,"huge":100000000000000000000000,"#
                + #""low":-9223372036854775809}"#)
        #expect(args["two64"] == .double(0x1p64))
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("two64") }
                == "Parameter 'two64' is out of range: 1.8446744073709552e+19")
        #expect(accessorError { () throws(QMPError) in try args.uint64("huge") }?.contains("out of range") == true)
        #expect(accessorError { () throws(QMPError) in try args.int("low") }?.contains("out of range") == true)
    }

    @Test(
        arguments: [
            ("0", 0), ("42", 42), ("18446744073709551615", UInt64.max), ("0x0", 0), ("0xfee00000", 0xfee0_0000),
            ("0XFEE0_0000", 0xfee0_0000), ("0xFFFF_FFFF_FFFF_FFFF", UInt64.max), ("1_000_000", 1_000_000),
            ("0x1__0", 0x10), ("-0", 0),
        ] as [(String, UInt64)])
    func uint64AcceptsDecimalAndHexStrings(text: String, expected: UInt64) throws {
        let args = QMPArguments(["v": .string(text)])
        #expect(try args.uint64("v") == expected)
    }

    @Test(arguments: [
        ("", "has no digits"), ("0x", "has no digits"), ("-", "has no digits"),
        ("18446744073709551616", "does not fit in 64 bits"), ("0x1_0000_0000_0000_0000", "does not fit in 64 bits"),
        ("010", "has a leading zero, which could be read as octal"),
        ("_1", "has an underscore that does not separate digits"),
        ("1_", "has an underscore that does not separate digits"),
        ("0x_1", "has an underscore that does not separate digits"),
        ("12z", "has an invalid digit 'z'"), ("0xfg", "has an invalid digit 'g'"), (" 1", "has an invalid digit ' '"),
        ("1 ", "has an invalid digit ' '"), ("+1", "has an invalid digit '+'"), ("1.0", "has an invalid digit '.'"),
        ("１", "has an invalid digit '１'"), ("0b1", "has an invalid digit 'b'"), ("--1", "has an invalid digit '-'"),
    ])
    func uint64RefusesMalformedStringsWithTheReason(text: String, reason: String) throws {
        let args = QMPArguments(["v": .string(text)])
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("v") }
                == "Parameter 'v' expects an integer: \(QMPValue.string(text).jsonText) \(reason)")
    }

    @Test func negativeStringsAreRefusedByUnsignedAccessors() throws {
        let args = QMPArguments(["v": "-0x10"])
        #expect(
            accessorError { () throws(QMPError) in try args.uint64("v") }
                == #"Parameter 'v' expects a uint64, got negative "-0x10""#)
        #expect(try args.int("v") == -16)
    }

    @Test func uint32ChecksItsRange() throws {
        let args = try arguments(#"{"max":4294967295,"over":4294967296,"hex":"0xffff_ffff","big":"0x1_0000_0000"}"#)
        #expect(try args.uint32("max") == UInt32.max)
        #expect(try args.uint32("hex") == UInt32.max)
        #expect(
            accessorError { () throws(QMPError) in try args.uint32("over") }
                == "Parameter 'over' is out of range for uint32: 4294967296")
        #expect(
            accessorError { () throws(QMPError) in try args.optionalUInt32("big") }
                == #"Parameter 'big' is out of range for uint32: "0x1_0000_0000""#)
    }

    @Test func intTakesInt64sWholeRange() throws {
        let args = try arguments(
            #"{"min":-9223372036854775808,"max":9223372036854775807,"over":9223372036854775808,"#
                + #""neg":-5,"s":"-9223372036854775808","so":"-0x8000_0000_0000_0001"}"#)
        #expect(try args.int("min") == Int.min)
        #expect(try args.int("max") == Int.max)
        #expect(try args.int("neg") == -5)
        #expect(try args.int("s") == Int.min)
        #expect(
            accessorError { () throws(QMPError) in try args.int("over") }
                == "Parameter 'over' is out of range for int: 9223372036854775808")
        #expect(
            accessorError { () throws(QMPError) in try args.int("so") }
                == #"Parameter 'so' is out of range for int: "-0x8000_0000_0000_0001""#)
    }

    @Test func integerAccessorsRefuseNonNumbersByType() throws {
        let args = try arguments(#"{"b":true,"n":null,"a":[1],"o":{}}"#)
        for (name, got) in [("b", "true"), ("n", "null"), ("a", "an array"), ("o", "an object")] {
            #expect(
                accessorError { () throws(QMPError) in try args.uint64(name) }
                    == "Invalid parameter type for '\(name)', expected: integer, got \(got)")
        }
    }

    @Test func uint32ArraysAreReadAndABadElementIsNamedByIndex() throws {
        let args = try arguments(#"{"groups":[0,7,"0x10",4294967295],"bad":[1,2,-3],"empty":[],"notArray":5}"#)
        #expect(try args.uint32Array("groups") == [0, 7, 16, UInt32.max])
        #expect(try args.optionalUInt32Array("empty") == [])
        #expect(
            accessorError { () throws(QMPError) in try args.uint32Array("bad") }
                == "Parameter 'bad[2]' expects a uint32, got negative -3")
        #expect(
            accessorError { () throws(QMPError) in try args.uint32Array("notArray") }
                == "Invalid parameter type for 'notArray', expected: array, got 5")
    }

    @Test func unknownArgumentNamesAreRefused() throws {
        let args = try arguments(#"{"device":"d","iova":1,"sizee":2}"#)
        try args.rejectUnknown(allowing: ["device", "iova", "sizee"])
        #expect(
            accessorError { () throws(QMPError) in try args.rejectUnknown(allowing: ["device", "iova", "size"]) }
                == "Parameter 'sizee' is unexpected")
        try QMPArguments().rejectUnknown(allowing: [])
    }

    @Test func accessorsWorkOnArgumentsBuiltInCode() throws {
        var args = QMPArguments(["iova": .uint(UInt64.max), "count": 3, "name": "x"])
        #expect(try args.uint64("iova") == UInt64.max)
        #expect(try args.int("count") == 3)
        args["count"] = nil
        #expect(args.names == ["iova", "name"])
    }
}
