//! Tokens → [`Node`] tree, by recursive descent with CEL's precedence:
//! `?:` < `||` < `&&` < relations < `+ -` < `* / %` < unary `! -` < member, index, call.

use std::sync::Arc;

use super::ast::{BinOp, MacroKind, MacroNode, Node};
use super::functions::{self, Func};
use super::lexer::{Tok, Token, tokenize};
use super::{MAX_DEPTH, MAX_SOURCE_BYTES, ParseError};
use crate::{Map, Value};

pub(crate) fn parse(source: &str) -> Result<Node, ParseError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ParseError {
            offset: 0,
            message: format!(
                "expression is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
            help: Some("move the logic into steps or compute parts in `vars`".into()),
        });
    }
    let tokens = tokenize(source)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
        locals: Vec::new(),
    };
    if parser.peek() == &Tok::Eof {
        return Err(ParseError {
            offset: 0,
            message: "empty expression".into(),
            help: None,
        });
    }
    let node = parser.expr()?;
    if parser.peek() != &Tok::Eof {
        return Err(parser.unexpected("after the end of the expression"));
    }
    Ok(node)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Nesting so far: brackets, unary operators and operator chains all count, so the tree
    /// height (and so evaluation's recursion) stays bounded by [`MAX_DEPTH`].
    depth: usize,
    /// Names bound by enclosing macros; a name's index is its stack slot at run time.
    locals: Vec<String>,
}

type Parsed = Result<Node, ParseError>;

fn error(offset: usize, message: impl Into<String>, help: Option<&str>) -> ParseError {
    ParseError {
        offset,
        message: message.into(),
        help: help.map(str::to_string),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].tok
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        let index = (self.pos + ahead).min(self.tokens.len() - 1);
        &self.tokens[index].tok
    }

    fn offset(&self) -> usize {
        self.tokens[self.pos].offset
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == tok {
            self.advance();
            true
        } else {
            false
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(error(
                self.offset(),
                format!("expression is nested too deeply (more than {MAX_DEPTH} levels)"),
                Some("long chains of operators count as nesting too; split the expression"),
            ));
        }
        Ok(())
    }

    /// An error for the current token, which does not fit `context`.
    fn unexpected(&self, context: &str) -> ParseError {
        let tok = self.peek();
        let offset = self.offset();
        let help = match tok {
            Tok::Assign => Some("did you mean '=='?"),
            Tok::Amp => Some("did you mean '&&'?"),
            Tok::Pipe => Some("did you mean '||'?"),
            Tok::Ident(name) if matches!(name.as_str(), "and" | "or" | "not") => {
                Some("CEL uses && || ! for and, or, not")
            }
            _ => None,
        };
        if tok == &Tok::Colon {
            return error(
                offset,
                "unexpected ':' — ternary needs '?' first",
                Some("write `condition ? then : else`"),
            );
        }
        error(
            offset,
            format!("unexpected {} {context}", tok.describe()),
            help,
        )
    }

    fn expect_close(
        &mut self,
        close: &Tok,
        what: impl FnOnce() -> String,
    ) -> Result<(), ParseError> {
        if self.eat(close) {
            return Ok(());
        }
        let mut e = self.unexpected("");
        e.message = format!("expected '{}' {}", close.symbol(), what());
        if e.help.is_none() && self.peek() != &Tok::Eof {
            e.help = Some(format!("found {}", self.peek().describe()));
        }
        Err(e)
    }

    fn expr(&mut self) -> Parsed {
        let condition = self.or()?;
        if !self.eat(&Tok::Question) {
            return Ok(condition);
        }
        self.deeper()?;
        let then = self.or()?;
        if !self.eat(&Tok::Colon) {
            let mut e = self.unexpected("in a conditional");
            e.message = format!(
                "expected ':' in the conditional, found {}",
                self.peek().describe()
            );
            return Err(e);
        }
        let otherwise = self.expr()?;
        self.depth -= 1;
        Ok(Node::Cond(
            Box::new(condition),
            Box::new(then),
            Box::new(otherwise),
        ))
    }

    fn or(&mut self) -> Parsed {
        let entry = self.depth;
        let mut left = self.and()?;
        while self.eat(&Tok::OrOr) {
            self.deeper()?;
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        self.depth = entry;
        Ok(left)
    }

    fn and(&mut self) -> Parsed {
        let entry = self.depth;
        let mut left = self.relation()?;
        while self.eat(&Tok::AndAnd) {
            self.deeper()?;
            let right = self.relation()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        self.depth = entry;
        Ok(left)
    }

    fn relation(&mut self) -> Parsed {
        let entry = self.depth;
        let mut left = self.additive()?;
        loop {
            let op = match self.peek() {
                Tok::Lt => BinOp::Lt,
                Tok::Le => BinOp::Le,
                Tok::Gt => BinOp::Gt,
                Tok::Ge => BinOp::Ge,
                Tok::EqEq => BinOp::Eq,
                Tok::Ne => BinOp::Ne,
                Tok::In => BinOp::In,
                Tok::Assign => return Err(self.unexpected("between values")),
                _ => break,
            };
            self.advance();
            self.deeper()?;
            let right = self.additive()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth = entry;
        Ok(left)
    }

    fn additive(&mut self) -> Parsed {
        let entry = self.depth;
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => break,
            };
            self.advance();
            self.deeper()?;
            let right = self.multiplicative()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth = entry;
        Ok(left)
    }

    fn multiplicative(&mut self) -> Parsed {
        let entry = self.depth;
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Rem,
                _ => break,
            };
            self.advance();
            self.deeper()?;
            let right = self.unary()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth = entry;
        Ok(left)
    }

    fn unary(&mut self) -> Parsed {
        match self.peek() {
            Tok::Bang => {
                self.advance();
                self.deeper()?;
                let operand = self.unary()?;
                self.depth -= 1;
                Ok(Node::Not(Box::new(operand)))
            }
            Tok::Minus => {
                self.advance();
                if self.peek() == &Tok::IntMinOverflow {
                    self.advance();
                    return self.postfix(Node::Const(Value::from(i64::MIN)));
                }
                self.deeper()?;
                let operand = self.unary()?;
                self.depth -= 1;
                Ok(match operand {
                    Node::Const(Value::Number(n)) if n.is_i64() => {
                        match n.as_i64().and_then(i64::checked_neg) {
                            Some(v) => Node::Const(Value::from(v)),
                            None => Node::Neg(Box::new(Node::Const(Value::Number(n)))),
                        }
                    }
                    Node::Const(Value::Number(n)) if n.is_f64() => {
                        Node::Const(Value::from(-n.as_f64().unwrap_or_default()))
                    }
                    other => Node::Neg(Box::new(other)),
                })
            }
            _ => {
                let primary = self.primary()?;
                self.postfix(primary)
            }
        }
    }

    fn postfix(&mut self, mut node: Node) -> Parsed {
        let entry = self.depth;
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.advance();
                    self.deeper()?;
                    let offset = self.offset();
                    let name = match self.advance().tok {
                        Tok::Ident(name) => name,
                        other => {
                            return Err(error(
                                offset,
                                format!(
                                    "expected a field name after '.', found {}",
                                    other.describe()
                                ),
                                None,
                            ));
                        }
                    };
                    if self.peek() == &Tok::LParen {
                        node = self.method(node, name, offset)?;
                    } else {
                        node = Node::Member(Box::new(node), name);
                    }
                }
                Tok::LBracket => {
                    let open = self.advance().offset;
                    self.deeper()?;
                    let index = self.expr()?;
                    self.expect_close(&Tok::RBracket, || {
                        format!("to close the index opened at {open}")
                    })?;
                    node = Node::Index(Box::new(node), Box::new(index));
                }
                _ => break,
            }
        }
        self.depth = entry;
        Ok(node)
    }

    fn primary(&mut self) -> Parsed {
        let offset = self.offset();
        let at_end = self.peek() == &Tok::Eof;
        let token = self.advance();
        Ok(match token.tok {
            Tok::Int(i) => Node::Const(Value::from(i)),
            Tok::Double(d) => Node::Const(Value::from(d)),
            Tok::Str(s) => Node::Const(Value::String(s)),
            Tok::True => Node::Const(Value::Bool(true)),
            Tok::False => Node::Const(Value::Bool(false)),
            Tok::Null => Node::Const(Value::Null),
            Tok::IntMinOverflow => {
                return Err(error(
                    offset,
                    "integer literal is too large for a 64-bit integer",
                    None,
                ));
            }
            Tok::Ident(name) => {
                if self.peek() == &Tok::LParen {
                    return self.global_call(name, offset);
                }
                if matches!(name.as_str(), "and" | "or" | "not") {
                    return Err(error(
                        offset,
                        format!("unexpected name '{name}'"),
                        Some("CEL uses && || ! for and, or, not"),
                    ));
                }
                match self.locals.iter().rposition(|local| *local == name) {
                    Some(slot) => Node::Local(slot),
                    None => Node::Root { name, offset },
                }
            }
            Tok::LParen => {
                self.deeper()?;
                let inner = self.expr()?;
                self.expect_close(&Tok::RParen, || {
                    format!("to close the parenthesis opened at {offset}")
                })?;
                self.depth -= 1;
                inner
            }
            Tok::LBracket => {
                self.deeper()?;
                let mut items = Vec::new();
                while self.peek() != &Tok::RBracket {
                    items.push(self.expr()?);
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.expect_close(&Tok::RBracket, || {
                    format!("to close the list opened at {offset}")
                })?;
                self.depth -= 1;
                list_node(items)
            }
            Tok::LBrace => {
                self.deeper()?;
                let node = self.map_literal(offset)?;
                self.depth -= 1;
                node
            }
            _ => {
                if !at_end {
                    self.pos -= 1;
                }
                let mut e = self.unexpected("where a value was expected");
                if self.peek() == &Tok::Eof {
                    e.message = "expression ends where a value was expected".into();
                }
                return Err(e);
            }
        })
    }

    fn map_literal(&mut self, open: usize) -> Parsed {
        let mut entries = Vec::new();
        while self.peek() != &Tok::RBrace {
            let key_offset = self.offset();
            let key = self.expr()?;
            if let Node::Const(value) = &key
                && functions::map_key(value).is_none()
            {
                return Err(error(
                    key_offset,
                    "map keys must be strings, integers or booleans",
                    None,
                ));
            }
            if !self.eat(&Tok::Colon) {
                let mut e = self.unexpected("in a map");
                e.message = format!(
                    "expected ':' after the map key, found {}",
                    self.peek().describe()
                );
                return Err(e);
            }
            let value = self.expr()?;
            entries.push((key, value));
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect_close(&Tok::RBrace, || {
            format!("to close the map opened at {open}")
        })?;
        if entries.iter().all(|(k, v)| k.is_const() && v.is_const()) {
            let mut map = Map::new();
            for (k, v) in entries {
                if let (Node::Const(k), Node::Const(v)) = (k, v) {
                    map.insert(functions::map_key(&k).unwrap_or_default(), v);
                }
            }
            return Ok(Node::Const(Value::Object(map)));
        }
        Ok(Node::Map(entries))
    }

    /// Comma-separated arguments up to the closing parenthesis (already past the `(`).
    fn arguments(&mut self, name: &str) -> Result<Vec<(usize, Node)>, ParseError> {
        let mut args = Vec::new();
        while self.peek() != &Tok::RParen {
            let offset = self.offset();
            args.push((offset, self.expr()?));
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect_close(&Tok::RParen, || format!("to close the call to {name}"))?;
        Ok(args)
    }

    fn global_call(&mut self, name: String, offset: usize) -> Parsed {
        self.advance(); // (
        self.deeper()?;
        let node = if name == "has" {
            let arg_offset = self.offset();
            let args = self.arguments(&name)?;
            match <[_; 1]>::try_from(args) {
                Ok([(_, Node::Member(target, field))]) => Node::Has(target, field),
                _ => {
                    return Err(error(
                        arg_offset,
                        "has() needs one field selection, like has(event.data.x)",
                        None,
                    ));
                }
            }
        } else {
            let func = lookup_function(&name, offset)?;
            let args = self.arguments(&name)?;
            call_node(func, &name, offset, args)?
        };
        self.depth -= 1;
        Ok(node)
    }

    /// `target.name(…)`; the current token is `(`.
    fn method(&mut self, target: Node, name: String, offset: usize) -> Parsed {
        self.advance(); // (
        self.deeper()?;
        let node = match MacroKind::from_name(&name) {
            Some(kind) => self.macro_call(kind, target, offset)?,
            None => {
                let func = lookup_function(&name, offset)?;
                let mut args = vec![(offset, target)];
                args.extend(self.arguments(&name)?);
                call_node(func, &name, offset, args)?
            }
        };
        self.depth -= 1;
        Ok(node)
    }

    fn macro_call(&mut self, kind: MacroKind, target: Node, offset: usize) -> Parsed {
        let name = kind.name();
        let var = match (self.peek().clone(), self.peek_at(1)) {
            (Tok::Ident(var), Tok::Comma) => var,
            _ => {
                return Err(error(
                    self.offset(),
                    format!("the first argument of {name}() must be a variable name"),
                    Some(&format!("for example: list.{name}(x, x > 0)")),
                ));
            }
        };
        self.advance();
        self.advance();
        let slot = self.locals.len();
        self.locals.push(var);
        let first = self.expr();
        let second = match &first {
            Ok(_) if kind == MacroKind::Map && self.eat(&Tok::Comma) => Some(self.expr()),
            _ => None,
        };
        self.locals.pop();
        let first = first?;
        let (filter, body) = match second {
            Some(body) => (Some(first), body?),
            None => (None, first),
        };
        if self.peek() == &Tok::Comma {
            return Err(error(
                self.offset(),
                format!("too many arguments to {name}()"),
                Some(&format!("{name}() takes a variable and an expression")),
            ));
        }
        self.expect_close(&Tok::RParen, || format!("to close the call to {name}"))?;
        let _ = offset;
        Ok(Node::Macro(Box::new(MacroNode {
            kind,
            target,
            slot,
            filter,
            body,
        })))
    }
}

fn list_node(items: Vec<Node>) -> Node {
    if items.iter().all(Node::is_const) {
        let values = items
            .into_iter()
            .map(|item| match item {
                Node::Const(v) => v,
                _ => Value::Null,
            })
            .collect();
        return Node::Const(Value::Array(values));
    }
    Node::List(items)
}

fn lookup_function(name: &str, offset: usize) -> Result<Func, ParseError> {
    if let Some(func) = Func::from_name(name) {
        return Ok(func);
    }
    let known =
        Func::NAMES
            .iter()
            .copied()
            .chain(["has", "all", "exists", "exists_one", "map", "filter"]);
    let best = known
        .map(|candidate| (strsim::jaro_winkler(name, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Err(ParseError {
        offset,
        message: format!("unknown function '{name}'"),
        help: best.map(|(_, candidate)| format!("did you mean '{candidate}'?")),
    })
}

fn call_node(func: Func, name: &str, offset: usize, args: Vec<(usize, Node)>) -> Parsed {
    let (min, max) = func.arity();
    if args.len() < min || args.len() > max {
        let expected = match (min, max) {
            (a, b) if a == b => format!("{a}"),
            (a, usize::MAX) => format!("at least {a}"),
            (a, b) => format!("{a} to {b}"),
        };
        return Err(error(
            offset,
            format!(
                "{name}() takes {expected} argument{} (counting the receiver), got {}",
                if max == 1 { "" } else { "s" },
                args.len()
            ),
            None,
        ));
    }
    let mut regex = None;
    if func == Func::Matches
        && let Some((pattern_offset, Node::Const(Value::String(pattern)))) = args.get(1)
    {
        let compiled = functions::compile_regex(pattern)
            .map_err(|message| error(*pattern_offset, message, None))?;
        regex = Some(Arc::new(compiled));
    }
    for (arg_offset, arg) in &args {
        if let Node::Const(Value::String(text)) = arg {
            let checked = match func {
                Func::Timestamp => functions::parse_timestamp(text).map(|_| ()),
                Func::Duration => functions::parse_duration(text).map(|_| ()),
                _ => Ok(()),
            };
            checked.map_err(|e| error(*arg_offset, e.message, None))?;
        }
    }
    Ok(Node::Call {
        func,
        args: args.into_iter().map(|(_, node)| node).collect(),
        regex,
    })
}
