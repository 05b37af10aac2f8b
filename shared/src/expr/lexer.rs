//! Source text → tokens. Offsets are character offsets into the expression source.

use super::ParseError;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    Int(i64),
    /// An integer literal that only fits with a leading minus (`9223372036854775808`).
    IntMinOverflow,
    Double(f64),
    Str(String),
    Ident(String),
    True,
    False,
    Null,
    In,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Dot,
    Comma,
    Colon,
    Question,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Bang,
    Lt,
    Le,
    Gt,
    Ge,
    EqEq,
    Ne,
    AndAnd,
    OrOr,
    /// Not CEL; lexed only to give a helpful error.
    Assign,
    Amp,
    Pipe,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("number {i}"),
            Tok::IntMinOverflow => "number 9223372036854775808".into(),
            Tok::Double(d) => format!("number {d}"),
            Tok::Str(_) => "a string".into(),
            Tok::Ident(name) => format!("name '{name}'"),
            Tok::True => "'true'".into(),
            Tok::False => "'false'".into(),
            Tok::Null => "'null'".into(),
            Tok::In => "'in'".into(),
            Tok::Eof => "the end of the expression".into(),
            other => format!("'{}'", other.symbol()),
        }
    }

    pub(crate) fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::Dot => ".",
            Tok::Comma => ",",
            Tok::Colon => ":",
            Tok::Question => "?",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Bang => "!",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::AndAnd => "&&",
            Tok::OrOr => "||",
            Tok::Assign => "=",
            Tok::Amp => "&",
            Tok::Pipe => "|",
            Tok::In => "in",
            _ => "?",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub offset: usize,
}

fn err(offset: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        offset,
        message: message.into(),
        help: None,
    }
}

pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let mut lexer = Lexer {
        chars: &chars,
        pos: 0,
    };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let eof = token.tok == Tok::Eof;
        tokens.push(token);
        if eof {
            return Ok(tokens);
        }
    }
}

struct Lexer<'c> {
    chars: &'c [char],
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn skip_trivia(&mut self) {
        while let Some(c) = self.peek(0) {
            if c.is_whitespace() {
                self.pos += 1;
            } else if c == '/' && self.peek(1) == Some('/') {
                while let Some(c) = self.peek(0) {
                    if c == '\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia();
        let start = self.pos;
        let Some(c) = self.peek(0) else {
            return Ok(Token {
                tok: Tok::Eof,
                offset: start,
            });
        };
        let two = |a: char| self.peek(1) == Some(a);
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            '{' => (Tok::LBrace, 1),
            '}' => (Tok::RBrace, 1),
            ',' => (Tok::Comma, 1),
            ':' => (Tok::Colon, 1),
            '?' => (Tok::Question, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '*' => (Tok::Star, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '!' if two('=') => (Tok::Ne, 2),
            '!' => (Tok::Bang, 1),
            '<' if two('=') => (Tok::Le, 2),
            '<' => (Tok::Lt, 1),
            '>' if two('=') => (Tok::Ge, 2),
            '>' => (Tok::Gt, 1),
            '=' if two('=') => (Tok::EqEq, 2),
            '=' => (Tok::Assign, 1),
            '&' if two('&') => (Tok::AndAnd, 2),
            '&' => (Tok::Amp, 1),
            '|' if two('|') => (Tok::OrOr, 2),
            '|' => (Tok::Pipe, 1),
            '.' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => return self.number(),
            '.' => (Tok::Dot, 1),
            '"' | '\'' => return self.string(start, false),
            'r' | 'R' if matches!(self.peek(1), Some('"' | '\'')) => {
                self.pos += 1;
                return self.string(start, true);
            }
            'b' | 'B' if matches!(self.peek(1), Some('"' | '\'')) => {
                return Err(err(start, "bytes literals are not supported"));
            }
            c if c.is_ascii_digit() => return self.number(),
            c if c == '_' || c.is_ascii_alphabetic() => return Ok(self.ident()),
            other => {
                return Err(err(start, format!("unexpected character '{other}'")));
            }
        };
        self.pos += len;
        Ok(Token { tok, offset: start })
    }

    fn ident(&mut self) -> Token {
        let start = self.pos;
        while self
            .peek(0)
            .is_some_and(|c| c == '_' || c.is_ascii_alphanumeric())
        {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        let tok = match text.as_str() {
            "true" => Tok::True,
            "false" => Tok::False,
            "null" => Tok::Null,
            "in" => Tok::In,
            _ => Tok::Ident(text),
        };
        Token { tok, offset: start }
    }

    fn number(&mut self) -> Result<Token, ParseError> {
        let start = self.pos;
        if self.peek(0) == Some('0') && matches!(self.peek(1), Some('x' | 'X')) {
            self.pos += 2;
            let digits_start = self.pos;
            while self.peek(0).is_some_and(|c| c.is_ascii_hexdigit()) {
                self.pos += 1;
            }
            let digits: String = self.chars[digits_start..self.pos].iter().collect();
            if digits.is_empty() {
                return Err(err(start, "hexadecimal number needs digits after '0x'"));
            }
            let value = u64::from_str_radix(&digits, 16)
                .map_err(|_| err(start, "integer literal is too large"))?;
            self.unsigned_suffix();
            self.reject_trailing_ident(start)?;
            return int_token(value, start);
        }
        let mut is_double = false;
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            is_double = true;
            self.pos += 1;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        if matches!(self.peek(0), Some('e' | 'E')) {
            let mut look = 1;
            if matches!(self.peek(1), Some('+' | '-')) {
                look = 2;
            }
            if self.peek(look).is_some_and(|c| c.is_ascii_digit()) {
                is_double = true;
                self.pos += look;
                while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if is_double {
            self.reject_trailing_ident(start)?;
            let value: f64 = text
                .parse()
                .map_err(|_| err(start, format!("invalid number '{text}'")))?;
            if !value.is_finite() {
                return Err(err(start, "number literal is too large"));
            }
            return Ok(Token {
                tok: Tok::Double(value),
                offset: start,
            });
        }
        self.unsigned_suffix();
        self.reject_trailing_ident(start)?;
        let value: u64 = text
            .parse()
            .map_err(|_| err(start, "integer literal is too large"))?;
        int_token(value, start)
    }

    fn unsigned_suffix(&mut self) {
        if matches!(self.peek(0), Some('u' | 'U')) {
            self.pos += 1;
        }
    }

    fn reject_trailing_ident(&self, start: usize) -> Result<(), ParseError> {
        match self.peek(0) {
            Some(c) if c == '_' || c.is_ascii_alphanumeric() => Err(err(
                self.pos,
                format!("unexpected '{c}' right after the number at {start}"),
            )),
            _ => Ok(()),
        }
    }

    /// `start` is where the literal starts (including an `r` prefix); `self.pos` is at the quote.
    fn string(&mut self, start: usize, raw: bool) -> Result<Token, ParseError> {
        let quote = self.chars[self.pos];
        let triple = self.peek(1) == Some(quote) && self.peek(2) == Some(quote);
        self.pos += if triple { 3 } else { 1 };
        let mut out = String::new();
        loop {
            let Some(c) = self.peek(0) else {
                return Err(ParseError {
                    offset: start,
                    message: "string is not closed".into(),
                    help: Some(format!("add the closing {quote}")),
                });
            };
            if c == quote {
                if !triple {
                    self.pos += 1;
                    break;
                }
                if self.peek(1) == Some(quote) && self.peek(2) == Some(quote) {
                    self.pos += 3;
                    break;
                }
            }
            if !triple && (c == '\n' || c == '\r') {
                return Err(ParseError {
                    offset: start,
                    message: "string is not closed before the end of the line".into(),
                    help: Some(
                        "use a triple-quoted string (\"\"\"…\"\"\") for text over several lines"
                            .into(),
                    ),
                });
            }
            if c == '\\' && !raw {
                self.escape(&mut out)?;
                continue;
            }
            out.push(c);
            self.pos += 1;
        }
        Ok(Token {
            tok: Tok::Str(out),
            offset: start,
        })
    }

    /// At a backslash: decodes one escape sequence into `out`.
    fn escape(&mut self, out: &mut String) -> Result<(), ParseError> {
        let at = self.pos;
        let Some(c) = self.peek(1) else {
            return Err(err(at, "string ends in the middle of an escape"));
        };
        self.pos += 2;
        let simple = match c {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            '`' => Some('`'),
            '?' => Some('?'),
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'v' => Some('\u{b}'),
            _ => None,
        };
        if let Some(ch) = simple {
            out.push(ch);
            return Ok(());
        }
        let code = match c {
            'u' if self.peek(0) == Some('{') => {
                self.pos += 1;
                let digits_start = self.pos;
                while self.peek(0).is_some_and(|c| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                let digits: String = self.chars[digits_start..self.pos].iter().collect();
                if self.peek(0) != Some('}') || digits.is_empty() || digits.len() > 6 {
                    return Err(err(
                        at,
                        "invalid \\u{…} escape: expected 1 to 6 hex digits and '}'",
                    ));
                }
                self.pos += 1;
                u32::from_str_radix(&digits, 16).ok()
            }
            'u' => self.fixed_hex(4),
            'U' => self.fixed_hex(8),
            'x' | 'X' => self.fixed_hex(2),
            '0'..='3' => {
                let digits: String = self.chars[at + 1..(at + 4).min(self.chars.len())]
                    .iter()
                    .collect();
                if digits.len() == 3 && digits.chars().all(|d| ('0'..='7').contains(&d)) {
                    self.pos = at + 4;
                    u32::from_str_radix(&digits, 8).ok()
                } else {
                    None
                }
            }
            other => {
                return Err(ParseError {
                    offset: at,
                    message: format!("unknown escape '\\{other}' in string"),
                    help: Some("write '\\\\' for a backslash, or use a raw string r\"…\"".into()),
                });
            }
        };
        match code.and_then(char::from_u32) {
            Some(ch) => {
                out.push(ch);
                Ok(())
            }
            None => Err(err(at, format!("invalid escape '\\{c}' in string"))),
        }
    }

    fn fixed_hex(&mut self, count: usize) -> Option<u32> {
        let end = self.pos + count;
        if end > self.chars.len() {
            return None;
        }
        let digits: String = self.chars[self.pos..end].iter().collect();
        let value = u32::from_str_radix(&digits, 16).ok()?;
        self.pos = end;
        Some(value)
    }
}

fn int_token(value: u64, offset: usize) -> Result<Token, ParseError> {
    let tok = match i64::try_from(value) {
        Ok(v) => Tok::Int(v),
        Err(_) if value == i64::MIN.unsigned_abs() => Tok::IntMinOverflow,
        Err(_) => {
            return Err(err(
                offset,
                "integer literal is too large for a 64-bit integer",
            ));
        }
    };
    Ok(Token { tok, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    fn string(s: &str) -> String {
        match &toks(s)[0] {
            Tok::Str(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("12 0x1F 7u 1.5 1e3 .5 2.5e-1")[..7],
            [
                Tok::Int(12),
                Tok::Int(31),
                Tok::Int(7),
                Tok::Double(1.5),
                Tok::Double(1000.0),
                Tok::Double(0.5),
                Tok::Double(0.25)
            ]
        );
        assert!(tokenize("99999999999999999999").is_err());
        assert!(tokenize("12abc").is_err());
    }

    #[test]
    fn string_escapes() {
        assert_eq!(string(r#""a\nb\t\\\"""#), "a\nb\t\\\"");
        assert_eq!(string(r"'it\'s'"), "it's");
        assert_eq!(string(r#""\u00e9\u{1F600}\x41\101""#), "é😀AA");
        assert_eq!(string(r#"r"a\nb""#), "a\\nb");
        assert_eq!(string("'''multi\nline'''"), "multi\nline");
        assert_eq!(
            string(r#""""has "quotes" inside""""#),
            "has \"quotes\" inside"
        );
        let e = tokenize(r#""bad \q""#).unwrap_err();
        assert_eq!(e.offset, 5);
        let e = tokenize("x + \"open").unwrap_err();
        assert_eq!(e.offset, 4);
        assert_eq!(e.message, "string is not closed");
    }

    #[test]
    fn operators_and_offsets() {
        let t = tokenize("a<=b && !c").unwrap();
        let offs: Vec<usize> = t.iter().map(|t| t.offset).collect();
        assert_eq!(offs, [0, 1, 3, 5, 8, 9, 10]);
        assert_eq!(t[1].tok, Tok::Le);
    }

    #[test]
    fn offsets_count_characters() {
        let t = tokenize("'é€' + x").unwrap();
        assert_eq!(t[2].offset, 7);
    }
}
