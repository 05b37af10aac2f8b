//! Expression language tests: parsing, evaluation, functions, macros, errors, references.

use serde_json::json;

use super::*;

fn scope() -> Map {
    let Value::Object(map) = json!({
        "event": {
            "id": "e1",
            "time": "2024-05-01T12:00:00Z",
            "data": {
                "temp": 31.5, "zone": "A", "count": 7, "tags": ["hot", "roof"],
                "items": [1, 2, 3, 4, 5], "name": "Sensor-1", "nested": {"a": {"b": 2}},
                "maintenance": null
            }
        },
        "steps": {"fetch": {"status": "succeeded", "output": {"x": 1, "list": [10, 20]}}},
        "vars": {"alerts": 2, "key": "fetch", "i": 1},
        "x": 100
    }) else {
        unreachable!()
    };
    map
}

#[track_caller]
fn eval(source: &str) -> Value {
    match Expr::parse(source) {
        Ok(expr) => match expr.eval(&scope()) {
            Ok(v) => v,
            Err(e) => panic!("{source}: eval error: {}", e.message),
        },
        Err(e) => panic!("{source}: parse error at {}: {}", e.offset, e.message),
    }
}

#[track_caller]
fn eval_err(source: &str) -> String {
    match Expr::parse(source)
        .unwrap_or_else(|e| panic!("{source}: parse error: {}", e.message))
        .eval(&scope())
    {
        Ok(v) => panic!("{source}: expected an error, got {v}"),
        Err(e) => e.message,
    }
}

#[track_caller]
fn parse_err(source: &str) -> ParseError {
    match Expr::parse(source) {
        Ok(_) => panic!("{source}: expected a parse error"),
        Err(e) => e,
    }
}

#[track_caller]
fn check(pairs: &[(&str, Value)]) {
    for (source, expected) in pairs {
        assert_eq!(&eval(source), expected, "{source}");
    }
}

#[test]
fn precedence() {
    check(&[
        ("1 + 2 * 3", json!(7)),
        ("(1 + 2) * 3", json!(9)),
        ("10 - 4 - 3", json!(3)),
        ("2 * 3 % 4", json!(2)),
        ("-2 * 3", json!(-6)),
        ("!true || true", json!(true)),
        ("true || false && false", json!(true)),
        ("1 < 2 == true", json!(true)),
        ("1 + 1 == 2 && 3 > 2", json!(true)),
        ("true ? 1 : 2 + 10", json!(1)),
        ("false ? 1 : true ? 2 : 3", json!(2)),
        ("false ? 1 : false ? 2 : 3", json!(3)),
        ("1 in [1, 2] && 3 in [3]", json!(true)),
        ("--3", json!(3)),
        ("!!false", json!(false)),
    ]);
}

#[test]
fn numbers_mix() {
    check(&[
        ("7 / 2", json!(3)),
        ("-7 / 2", json!(-3)),
        ("7 % 3", json!(1)),
        ("-7 % 3", json!(-1)),
        ("7.0 / 2", json!(3.5)),
        ("1 + 0.5", json!(1.5)),
        ("31.5 > 30", json!(true)),
        ("event.data.temp > 30", json!(true)),
        ("2 * 1.5", json!(3.0)),
        ("7.5 % 2", json!(1.5)),
        ("1 == 1.0", json!(true)),
        ("1 != 1.5", json!(true)),
        ("0x10 + 1u", json!(17)),
        ("1e3", json!(1000.0)),
        (".5 + .5", json!(1.0)),
        ("-9223372036854775808", json!(i64::MIN)),
        ("3 < 3.5 && 3.5 <= 4", json!(true)),
    ]);
    assert_eq!(eval("1 + 2").as_i64(), Some(3));
    assert!(eval("6.0 / 2").is_f64());
}

#[test]
fn arithmetic_errors() {
    assert_eq!(eval_err("1 / 0"), "division by zero");
    assert_eq!(eval_err("1 % 0"), "modulo by zero");
    assert_eq!(eval_err("1.5 / 0"), "division by zero");
    assert_eq!(
        eval_err("9223372036854775807 + 1"),
        "integer overflow in '+'"
    );
    assert_eq!(
        eval_err("-9223372036854775808 - 1"),
        "integer overflow in '-'"
    );
    assert_eq!(
        eval_err("4611686018427387904 * 2"),
        "integer overflow in '*'"
    );
    assert_eq!(
        eval_err("-9223372036854775808 / -1"),
        "integer overflow in '/'"
    );
    assert_eq!(
        eval_err("-(-9223372036854775808)"),
        "integer overflow in negation"
    );
    assert_eq!(eval_err("1e308 * 10"), "result is not a finite number");
    assert!(eval_err("'a' + 1").contains("use string(x)"));
    assert_eq!(
        eval_err("'a' - 'b'"),
        "cannot apply '-' to string and string"
    );
    assert_eq!(
        eval_err("{'a': 1} + {'b': 2}"),
        "cannot apply '+' to map and map"
    );
}

#[test]
fn strings_and_escapes() {
    check(&[
        (r#""a\nb""#, json!("a\nb")),
        (r"'tab\there'", json!("tab\there")),
        (r#""q\"uote" + 'it\'s'"#, json!("q\"uoteit's")),
        (r#""\u00e9\u{1F600}""#, json!("é😀")),
        (r#"r"C:\path\n""#, json!("C:\\path\\n")),
        ("'''a\n'b'\n'''", json!("a\n'b'\n")),
        ("'ab' + 'cd'", json!("abcd")),
        ("'abc' < 'abd'", json!(true)),
        ("'b' > 'abc'", json!(true)),
    ]);
}

#[test]
fn comparisons_and_equality() {
    check(&[
        ("[1, [2, 3]] == [1, [2, 3.0]]", json!(true)),
        ("[1, 2] == [2, 1]", json!(false)),
        ("{'a': 1, 'b': [1]} == {'b': [1], 'a': 1.0}", json!(true)),
        ("{'a': 1} == {'a': 1, 'b': 2}", json!(false)),
        ("'1' == 1", json!(false)),
        ("null == null", json!(true)),
        ("event.data.missing == null", json!(true)),
        ("event.data.zone != null", json!(true)),
        ("[1] + [2] == [1, 2]", json!(true)),
        ("false < true", json!(true)),
        ("event.data == event.data", json!(true)),
    ]);
    assert_eq!(eval_err("'a' < 1"), "cannot compare string with int");
    assert_eq!(eval_err("null < 1"), "cannot compare null with int");
    assert_eq!(eval_err("[1] < [2]"), "cannot compare list with list");
}

#[test]
fn member_access_and_missing_keys() {
    check(&[
        ("event.data.zone", json!("A")),
        ("event.data.maintenance == true", json!(false)),
        ("event.data.absent == true", json!(false)),
        ("event.data.absent.deeper.still", json!(null)),
        ("event['data']['zone']", json!("A")),
        ("event.data.tags[1]", json!("roof")),
        ("event.data.tags[-0]", json!("hot")),
        ("steps[vars.key].output.list[vars.i]", json!(20)),
        ("{'a': {'b': 1}}.a.b", json!(1)),
        ("[[1, 2], [3]][0][1]", json!(2)),
        (
            "{1: 'one', true: 'yes'}",
            json!({"1": "one", "true": "yes"}),
        ),
        ("{1: 'one'}[1]", json!("one")),
        ("1 in {1: 'one'}", json!(true)),
    ]);
    assert_eq!(eval_err("nope.x"), "unknown name 'nope'");
    assert_eq!(
        eval_err("event.data.tags[2]"),
        "index 2 is out of range for a list of 2"
    );
    assert_eq!(
        eval_err("event.data.tags[-1]"),
        "index -1 is out of range for a list of 2"
    );
    assert_eq!(
        eval_err("event.data.zone.x"),
        "cannot read field 'x' of string"
    );
    assert_eq!(
        eval_err("event.data.tags['a']"),
        "a list is indexed by an integer, got string"
    );
}

#[test]
fn logic_absorbs_errors() {
    check(&[
        ("false && nope", json!(false)),
        ("nope && false", json!(false)),
        ("true || nope", json!(true)),
        ("nope || true", json!(true)),
        ("false && 1 / 0 == 1", json!(false)),
        ("true && true", json!(true)),
        ("false || false", json!(false)),
    ]);
    assert_eq!(eval_err("true && nope"), "unknown name 'nope'");
    assert_eq!(eval_err("nope || false"), "unknown name 'nope'");
    assert_eq!(eval_err("1 && true"), "'&&' needs booleans, got int");
    assert_eq!(eval_err("!1"), "'!' needs a boolean, got int");
}

#[test]
fn ternary() {
    check(
        &[
            ("x > 50 ? 'big' : 'small'", json!("big")),
            ("x > 500 ? 'big' : 'small'", json!("small")),
            ("true ? nope : 1", json!(null)).clone(),
        ]
        .into_iter()
        .filter(|(s, _)| !s.contains("nope"))
        .collect::<Vec<_>>(),
    );
    assert_eq!(eval("false ? nope : 1"), json!(1));
    assert_eq!(
        eval_err("1 ? 2 : 3"),
        "the condition before '?' must be a boolean, got int"
    );
}

#[test]
fn membership() {
    check(&[
        ("'hot' in event.data.tags", json!(true)),
        ("'cold' in event.data.tags", json!(false)),
        ("2.0 in [1, 2]", json!(true)),
        ("'zone' in event.data", json!(true)),
        ("'nope' in event.data", json!(false)),
        ("[1] in [[1], [2]]", json!(true)),
    ]);
    assert_eq!(
        eval_err("'a' in 'abc'"),
        "'in' needs a list or a map on its right, got string"
    );
}

#[test]
fn string_functions() {
    check(&[
        ("size('héllo')", json!(5)),
        ("'héllo'.size()", json!(5)),
        ("size(event.data.tags)", json!(2)),
        ("size(event.data)", json!(8)),
        ("'hello'.contains('ell')", json!(true)),
        ("event.data.tags.contains('roof')", json!(true)),
        (
            "'hello'.startsWith('he') && 'hello'.endsWith('lo')",
            json!(true),
        ),
        ("'Sensor-12'.matches('^Sensor-[0-9]+$')", json!(true)),
        ("'abc'.matches('b')", json!(true)),
        ("'abc'.matches(event.data.zone)", json!(false)),
        (
            "'MiXed'.lowerAscii() + 'MiXed'.upperAscii()",
            json!("mixedMIXED"),
        ),
        ("'  pad \\n'.trim()", json!("pad")),
        ("'a,b,,c'.split(',')", json!(["a", "b", "", "c"])),
        ("'a,b,c'.split(',', 2)", json!(["a", "b,c"])),
        ("'abc'.split('')", json!(["a", "b", "c"])),
        ("['a', 'b'].join('-')", json!("a-b")),
        ("['a', 'b'].join()", json!("ab")),
        ("'aXbXc'.replace('X', '_')", json!("a_b_c")),
        ("'aXbXc'.replace('X', '_', 1)", json!("a_bXc")),
        ("'héllo'.indexOf('l')", json!(2)),
        ("'héllo'.indexOf('l', 3)", json!(3)),
        ("'hello'.indexOf('z')", json!(-1)),
        ("'héllo'.lastIndexOf('l')", json!(3)),
        ("'héllo'.substring(1, 3)", json!("él")),
        ("'héllo'.substring(2)", json!("llo")),
    ]);
    assert!(eval_err("'abc'.substring(2, 5)").contains("out of range"));
    assert_eq!(
        eval_err("size(1)"),
        "size() needs a string, list or map as its receiver, got int"
    );
    assert_eq!(
        eval_err("[1].join(',')"),
        "join() needs a list of strings, found int"
    );
    assert_eq!(
        eval_err("'a'.startsWith(1)"),
        "startsWith() needs a string as argument 2, got int"
    );
    assert!(eval_err("'a'.matches(event.data.zone + '(')").contains("invalid regular expression"));
}

#[test]
fn conversions() {
    check(&[
        ("string(12)", json!("12")),
        ("string(1.5)", json!("1.5")),
        ("string(true)", json!("true")),
        ("string(null)", json!("null")),
        ("string([1, 'a'])", json!("[1,\"a\"]")),
        ("int('42') + 1", json!(43)),
        ("int(3.9)", json!(3)),
        ("int(-3.9)", json!(-3)),
        ("uint(5)", json!(5)),
        ("double(2)", json!(2.0)),
        ("double('2.5')", json!(2.5)),
        ("bool('true')", json!(true)),
        ("bool(false)", json!(false)),
        ("type(1)", json!("int")),
        ("type(1.0)", json!("double")),
        ("type('a') == 'string'", json!(true)),
        (
            "[type(null), type([]), type({}), type(true)]",
            json!(["null", "list", "map", "bool"]),
        ),
        ("dyn(3)", json!(3)),
        ("abs(-3)", json!(3)),
        ("abs(-2.5)", json!(2.5)),
        ("min(3, 1.5, 2)", json!(1.5)),
        ("max(3, 1.5, 2)", json!(3)),
        ("max(event.data.items)", json!(5)),
        ("min([4, 2, 8])", json!(2)),
        ("max('a', 'b')", json!("b")),
        ("keys({'a': 1, 'b': 2})", json!(["a", "b"])),
        ("values({'a': 1, 'b': 2})", json!([1, 2])),
        ("event.data.nested.keys()", json!(["a"])),
    ]);
    assert_eq!(eval_err("int('x')"), "int() cannot read 'x' as an integer");
    assert_eq!(eval_err("uint(-1)"), "uint() of negative number -1");
    assert!(eval_err("int(1e30)").ends_with("is out of range"));
    assert_eq!(
        eval_err("bool('maybe')"),
        "bool() cannot read 'maybe' as a boolean"
    );
    assert_eq!(eval_err("max([])"), "max() of an empty list");
    assert_eq!(eval_err("max(1, 'a')"), "cannot compare string with int");
    assert_eq!(
        eval_err("abs(-9223372036854775808)"),
        "integer overflow in abs()"
    );
}

#[test]
fn time() {
    check(&[
        (
            "timestamp(event.time) > timestamp('2024-01-01T00:00:00Z')",
            json!(true),
        ),
        (
            "timestamp('2024-05-01T12:00:00Z') + duration('1h30m')",
            json!("2024-05-01T13:30:00Z"),
        ),
        (
            "timestamp('2024-05-01T12:00:00+02:00') - duration('1d')",
            json!("2024-04-30T12:00:00+02:00"),
        ),
        (
            "timestamp('2024-05-01T12:00:10Z') - timestamp('2024-05-01T12:00:00Z')",
            json!(10),
        ),
        (
            "timestamp('2024-05-01T12:00:10Z') - timestamp(event.time) > duration('5s')",
            json!(true),
        ),
        (
            "timestamp('2024-05-01T12:00:10Z') - timestamp(event.time) < 60",
            json!(true),
        ),
        ("duration('1.5s')", json!(1.5)),
        ("duration('250ms') < duration('1s')", json!(true)),
        ("duration('-2m')", json!(-120)),
        ("duration('1m') == duration('60s')", json!(true)),
        ("string(duration('90s'))", json!("90s")),
        ("int(timestamp('1970-01-01T00:01:00Z'))", json!(60)),
        ("type(timestamp(event.time))", json!("timestamp")),
        (
            "timestamp(event.time) == timestamp('2024-05-01T14:00:00+02:00')",
            json!(true),
        ),
    ]);
    assert!(eval_err("timestamp(event.data.zone)").contains("not an RFC 3339 timestamp"));
    let e = parse_err("duration('10 parsecs')");
    assert_eq!(e.offset, 9);
    assert!(e.message.contains("not a duration"), "{}", e.message);
    assert!(
        parse_err("timestamp('yesterday')")
            .message
            .contains("RFC 3339")
    );
}

#[test]
fn macros() {
    check(&[
        ("event.data.items.all(i, i > 0)", json!(true)),
        ("event.data.items.all(i, i > 1)", json!(false)),
        ("event.data.items.exists(i, i > 4)", json!(true)),
        ("event.data.items.exists(i, i > 5)", json!(false)),
        ("event.data.items.exists_one(i, i > 4)", json!(true)),
        ("event.data.items.exists_one(i, i > 3)", json!(false)),
        ("event.data.items.map(i, i * 2)", json!([2, 4, 6, 8, 10])),
        (
            "event.data.items.map(i, i % 2 == 0, i * 10)",
            json!([20, 40]),
        ),
        ("event.data.items.filter(i, i > 3)", json!([4, 5])),
        ("[1, 2, 3].map(x, x * x).filter(y, y > 3)", json!([4, 9])),
        ("{'a': 1, 'b': 2}.map(k, k + '!')", json!(["a!", "b!"])),
        ("event.data.exists(k, k == 'zone')", json!(true)),
        (
            "[[1, 2], [3]].map(l, l.map(x, x + 1))",
            json!([[2, 3], [4]]),
        ),
        (
            "[1, 2].map(a, [10, 20].map(b, a * b))",
            json!([[10, 20], [20, 40]]),
        ),
        ("[].all(x, x)", json!(true)),
        ("[].exists(x, x)", json!(false)),
        // A bound name shadows a root of the same name, only inside the macro.
        ("[1, 2].map(x, x + 1) + [x]", json!([2, 3, 100])),
        ("[1, 2].map(event, event)", json!([1, 2])),
        // Errors are absorbed by a deciding element, like &&/||.
        ("[0, 1].all(i, 10 / i > 20)", json!(false)),
        ("[0, 1].exists(i, 10 / i == 10)", json!(true)),
    ]);
    assert_eq!(eval_err("[0, 1].all(i, 10 / i > 0)"), "division by zero");
    assert_eq!(
        eval_err("[1].all(i, i)"),
        "the condition of all() must be a boolean, got int"
    );
    assert_eq!(
        eval_err("1.exists(i, true)"),
        "exists() needs a list or a map, got int"
    );
    let e = parse_err("[1].all(1, true)");
    assert_eq!(
        e.message,
        "the first argument of all() must be a variable name"
    );
    assert_eq!(e.offset, 8);
}

#[test]
fn has_macro() {
    check(&[
        ("has(event.data.zone)", json!(true)),
        ("has(event.data.maintenance)", json!(true)),
        ("has(event.data.absent)", json!(false)),
        ("has(event.data.absent.deeper)", json!(false)),
        ("has(event.data.nested.a.b)", json!(true)),
    ]);
    assert_eq!(
        parse_err("has(event)").message,
        "has() needs one field selection, like has(event.data.x)"
    );
    assert!(eval_err("has(event.data.zone.x)").contains("has() needs a map"));
}

#[test]
fn collections_and_literals() {
    check(&[
        (
            "[1, 'a', null, true, 1.5]",
            json!([1, "a", null, true, 1.5]),
        ),
        ("[event.data.zone, x]", json!(["A", 100])),
        (
            "{'zone': event.data.zone, 'n': x + 1}",
            json!({"zone": "A", "n": 101}),
        ),
        ("[1, 2,]", json!([1, 2])),
        ("{}", json!({})),
        ("[]", json!([])),
    ]);
    assert!(eval_err("{[x]: 2}.a").contains("map keys must be"));
}

#[test]
fn parse_errors() {
    let e = parse_err("a = 1");
    assert_eq!(
        (e.offset, e.help.as_deref()),
        (2, Some("did you mean '=='?"))
    );
    let e = parse_err("a and b");
    assert_eq!(e.offset, 2);
    assert_eq!(e.help.as_deref(), Some("CEL uses && || ! for and, or, not"));
    let e = parse_err("not a");
    assert_eq!(
        (e.offset, e.help.as_deref()),
        (0, Some("CEL uses && || ! for and, or, not"))
    );
    let e = parse_err("a & b");
    assert_eq!(e.help.as_deref(), Some("did you mean '&&'?"));
    let e = parse_err("size(x");
    assert_eq!(
        (e.offset, e.message.as_str()),
        (6, "expected ')' to close the call to size")
    );
    let e = parse_err("a : b");
    assert_eq!(
        (e.offset, e.message.as_str()),
        (2, "unexpected ':' — ternary needs '?' first")
    );
    let e = parse_err("a ? b");
    assert_eq!(e.offset, 5);
    assert!(e.message.starts_with("expected ':'"), "{}", e.message);
    let e = parse_err("sise(x)");
    assert_eq!(
        (e.offset, e.message.as_str()),
        (0, "unknown function 'sise'")
    );
    assert_eq!(e.help.as_deref(), Some("did you mean 'size'?"));
    let e = parse_err("x.startwith('a')");
    assert_eq!(
        (e.offset, e.help.as_deref()),
        (2, Some("did you mean 'startsWith'?"))
    );
    let e = parse_err("(1 + 2");
    assert_eq!(
        e.message,
        "expected ')' to close the parenthesis opened at 0"
    );
    let e = parse_err("[1, 2");
    assert_eq!(e.message, "expected ']' to close the list opened at 0");
    let e = parse_err("1 +");
    assert_eq!(
        (e.offset, e.message.as_str()),
        (3, "expression ends where a value was expected")
    );
    let e = parse_err("1 2");
    assert_eq!(
        (e.offset, e.message.as_str()),
        (2, "unexpected number 2 after the end of the expression")
    );
    let e = parse_err("'é' == #");
    assert_eq!(
        (e.offset, e.message.as_str()),
        (7, "unexpected character '#'")
    );
    assert_eq!(parse_err("").message, "empty expression");
    assert_eq!(
        parse_err("size(1, 2)").message,
        "size() takes 1 argument (counting the receiver), got 2"
    );
    assert!(
        parse_err("'a'.matches('(')")
            .message
            .contains("invalid regular expression")
    );
    assert_eq!(parse_err("'a'.matches('(')").offset, 12);
    assert_eq!(
        parse_err("{[1]: 2}").message,
        "map keys must be strings, integers or booleans"
    );
}

#[test]
fn pathological_input_is_refused() {
    let deep = format!("{}1{}", "(".repeat(65), ")".repeat(65));
    assert!(parse_err(&deep).message.contains("nested too deeply"));
    let ok = format!("{}1{}", "(".repeat(30), ")".repeat(30));
    assert_eq!(eval(&ok), json!(1));
    let chain = vec!["1"; 200].join(" + ");
    assert!(parse_err(&chain).message.contains("nested too deeply"));
    let members = format!("event{}", ".a".repeat(100));
    assert!(parse_err(&members).message.contains("nested too deeply"));
    let negations = format!("{}true", "!".repeat(100));
    assert!(parse_err(&negations).message.contains("nested too deeply"));
    let long = format!("'{}'", "a".repeat(MAX_SOURCE_BYTES));
    assert!(parse_err(&long).message.contains("the limit is 16384"));
}

#[test]
fn runtime_growth_is_capped() {
    let mut scope = Map::new();
    scope.insert("big".into(), json!("x".repeat(600 * 1024)));
    scope.insert("list".into(), Value::Array(vec![json!(0); 2000]));
    let run = |s: &str| Expr::parse(s).unwrap().eval(&scope);
    assert!(
        run("big + big")
            .unwrap_err()
            .message
            .contains("the limit is 1048576")
    );
    assert!(run("size(big + 'y')").is_ok());
    // 2000 × 2000 × 2000 iterations would take very long: the budget stops it.
    let e = run("list.all(a, list.all(b, list.all(c, true)))").unwrap_err();
    assert!(e.message.contains("too costly"), "{}", e.message);
    let e = run("list.map(a, list.map(b, list))").unwrap_err();
    assert!(e.message.contains("too costly"), "{}", e.message);
}

#[test]
fn references_follow_constant_paths() {
    let refs = |s: &str| {
        Expr::parse(s)
            .unwrap()
            .references()
            .into_iter()
            .map(|r| (r.root, r.path.join("."), r.offset))
            .collect::<Vec<_>>()
    };
    let r = |root: &str, path: &str, offset: usize| (root.to_string(), path.to_string(), offset);
    assert_eq!(
        refs("steps.fetch.output.x"),
        [r("steps", "fetch.output.x", 0)]
    );
    assert_eq!(
        refs("steps['fetch'].status"),
        [r("steps", "fetch.status", 0)]
    );
    assert_eq!(
        refs("1 + steps[vars.k].status"),
        [r("steps", "", 4), r("vars", "k", 10)]
    );
    assert_eq!(
        refs("steps.fetch.output.list[0].y"),
        [r("steps", "fetch.output.list", 0)]
    );
    assert_eq!(
        refs("event.data.items.exists(i, i > inputs.min && i.ok)"),
        [r("event", "data.items", 0), r("inputs", "min", 31)]
    );
    assert_eq!(refs("[1].map(x, x) + [x]"), [r("x", "", 17)]);
    assert_eq!(refs("has(event.data.x)"), [r("event", "data.x", 4)]);
    assert_eq!(
        refs("size(vars.list) > 0 ? 'a' : env.B"),
        [r("vars", "list", 5), r("env", "B", 28)]
    );
    assert_eq!(refs("'é' + vars.a"), [r("vars", "a", 6)]);
    assert!(Expr::parse("1 + 2").unwrap().references().is_empty());
}

#[test]
fn eval_bool_and_constants() {
    let expr = Expr::parse("event.data.temp > 30 && event.data.zone == 'A'").unwrap();
    assert_eq!(expr.eval_bool(&scope()), Ok(true));
    let e = Expr::parse("x").unwrap().eval_bool(&scope()).unwrap_err();
    assert_eq!(e.message, "expected a boolean, got int 100");
    let c = Expr::constant(json!({"a": [1, 2]}));
    assert_eq!(c.eval(&scope()), Ok(json!({"a": [1, 2]})));
    assert_eq!(c.source(), r#"{"a":[1,2]}"#);
    assert!(c.is_constant());
    assert!(Expr::parse("[1, {'a': 2}]").unwrap().is_constant());
    assert_eq!(Expr::parse(" x ").unwrap().source(), " x ");
}

mod arithmetic_model {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Tree {
        Leaf(i64),
        Op(char, Box<Tree>, Box<Tree>),
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = (-50i64..50).prop_map(Tree::Leaf);
        leaf.prop_recursive(4, 16, 2, |inner| {
            (
                prop::sample::select(vec!['+', '-', '*', '/', '%']),
                inner.clone(),
                inner,
            )
                .prop_map(|(op, a, b)| Tree::Op(op, Box::new(a), Box::new(b)))
        })
    }

    fn source(tree: &Tree) -> String {
        match tree {
            Tree::Leaf(i) if *i < 0 => format!("({i})"),
            Tree::Leaf(i) => i.to_string(),
            Tree::Op(op, a, b) => format!("({} {op} {})", source(a), source(b)),
        }
    }

    fn model(tree: &Tree) -> Option<i64> {
        match tree {
            Tree::Leaf(i) => Some(*i),
            Tree::Op(op, a, b) => {
                let (a, b) = (model(a)?, model(b)?);
                match op {
                    '+' => a.checked_add(b),
                    '-' => a.checked_sub(b),
                    '*' => a.checked_mul(b),
                    '/' => a.checked_div(b),
                    _ => a.checked_rem(b),
                }
            }
        }
    }

    proptest! {
        #[test]
        fn matches_i64(tree in tree()) {
            let expr = Expr::parse(&source(&tree)).unwrap();
            let got = expr.eval(&Map::new()).ok().and_then(|v| v.as_i64());
            prop_assert_eq!(got, model(&tree));
        }
    }
}
