//! The node `condition` language and the value paths used by `input_mapping`.
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | compare
//! compare := primary ( ("==" | "!=" | "<" | "<=" | ">" | ">=") primary )?
//! primary := "(" expr ")" | literal | path
//! literal := number | 'text' | "text" | true | false | null | none
//! path    := "input" ( "." key )* | "results" "." node_id ( "." key )*
//! ```
//!
//! The language is typed and fails closed: `&&`, `||` and `!` take booleans, ordering compares two
//! numbers or two strings, and the whole expression must yield a boolean. Anything else is an
//! [`EvalError`], which fails the node with error type `condition_error`; it never counts as true.
//! A path that leads nowhere yields `null`, so `results.a.x == null` tests for absence.
//!
//! Node ids may contain dots, so `results.` paths are resolved against the DAG's node ids when the
//! condition is compiled: the longest run of segments that names a node wins.
//!
//! Parsing is recursive but bounded: expressions are at most [`MAX_LEN`] bytes and
//! [`MAX_DEPTH`] levels of `!` and parentheses, and `&&`/`||` chains are stored flat, so neither
//! parsing, evaluation nor dropping can exhaust the stack.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Longest accepted condition, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest accepted nesting of `!` and parentheses.
pub const MAX_DEPTH: usize = 32;

/// Where a path starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The execution's input.
    Input,
    /// The outputs of a node (an ancestor of the node that uses the path).
    Results(String),
}

/// A resolved path into the execution input or a node's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuePath {
    pub root: Root,
    pub keys: Vec<String>,
}

impl ValuePath {
    /// Parses an `input_mapping` source such as `results.load.rows` or `input.year`.
    pub fn parse(text: &str, is_node: impl Fn(&str) -> bool) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        match tokens.as_slice() {
            [Token::Path(segments)] => resolve(segments, &is_node),
            _ => Err(format!("{text:?} is not a path; use input.<key>... or results.<node>.<key>...")),
        }
    }

    /// The node whose outputs this path reads, if any.
    pub fn node(&self) -> Option<&str> {
        match &self.root {
            Root::Results(node) => Some(node),
            Root::Input => None,
        }
    }

    /// Follows the path; a missing key or index gives `null`.
    pub fn lookup(&self, scope: &Scope<'_>) -> Value {
        let start = match &self.root {
            Root::Input => Some(scope.input),
            Root::Results(node) => scope.results.get(node),
        };
        let mut current = start;
        for key in &self.keys {
            current = current.and_then(|v| match v {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            });
        }
        current.cloned().unwrap_or(Value::Null)
    }
}

impl fmt::Display for ValuePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Input => f.write_str("input")?,
            Root::Results(node) => write!(f, "results.{node}")?,
        }
        self.keys.iter().try_for_each(|k| write!(f, ".{k}"))
    }
}

/// What a condition or path is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub input: &'a Value,
    /// Outputs of the nodes that have finished, by node id.
    pub results: &'a BTreeMap<String, Value>,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Value),
    Path(ValuePath),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Compare(Box<Expr>, CmpOp, Box<Expr>),
}

/// A parsed, resolved condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

/// A condition could not be evaluated (wrong types); the node fails with `condition_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition {expression:?} cannot be evaluated: {reason}")]
pub struct EvalError {
    pub expression: String,
    pub reason: String,
}

impl Condition {
    /// Parses `source`, resolving `results.` paths with `is_node`.
    pub fn parse(source: &str, is_node: impl Fn(&str) -> bool) -> Result<Self, String> {
        if source.len() > MAX_LEN {
            return Err(format!("is {} bytes long; the limit is {MAX_LEN}", source.len()));
        }
        let tokens = tokenize(source)?;
        let mut parser = Parser { tokens: &tokens, pos: 0, is_node: &is_node };
        let expr = parser.or(0)?;
        if let Some(extra) = parser.tokens.get(parser.pos) {
            return Err(format!("unexpected {extra} after a complete expression"));
        }
        Ok(Self { source: source.to_owned(), expr })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The nodes whose outputs this condition reads, sorted and without repeats.
    pub fn referenced_nodes(&self) -> Vec<&str> {
        let mut nodes = Vec::new();
        let mut stack = vec![&self.expr];
        while let Some(expr) = stack.pop() {
            match expr {
                Expr::Literal(_) => {}
                Expr::Path(p) => nodes.extend(p.node()),
                Expr::Not(e) => stack.push(e),
                Expr::And(es) | Expr::Or(es) => stack.extend(es),
                Expr::Compare(l, _, r) => stack.extend([&**l, &**r]),
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// True runs the node, false skips it; an error fails it.
    pub fn evaluate(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        let fail = |reason: String| EvalError { expression: self.source.clone(), reason };
        match eval(&self.expr, scope).map_err(fail)? {
            Value::Bool(b) => Ok(b),
            other => Err(fail(format!("the result is {}, not a boolean", type_name(&other)))),
        }
    }
}

fn eval(expr: &Expr, scope: &Scope<'_>) -> Result<Value, String> {
    match expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::Path(p) => Ok(p.lookup(scope)),
        Expr::Not(e) => Ok(Value::Bool(!boolean(&eval(e, scope)?, "!")?)),
        Expr::And(es) => {
            for e in es {
                if !boolean(&eval(e, scope)?, "&&")? {
                    return Ok(Value::Bool(false));
                }
            }
            Ok(Value::Bool(true))
        }
        Expr::Or(es) => {
            for e in es {
                if boolean(&eval(e, scope)?, "||")? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        Expr::Compare(l, op, r) => compare(&eval(l, scope)?, *op, &eval(r, scope)?).map(Value::Bool),
    }
}

fn boolean(v: &Value, op: &str) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("{op} needs booleans, got {}", type_name(v)))
}

fn compare(l: &Value, op: CmpOp, r: &Value) -> Result<bool, String> {
    let numbers = l.as_f64().zip(r.as_f64());
    if matches!(op, CmpOp::Eq | CmpOp::Ne) {
        let equal = match numbers {
            Some((a, b)) => a == b,
            None => l == r,
        };
        return Ok(equal == (op == CmpOp::Eq));
    }
    let ordering = match (numbers, l, r) {
        (Some((a, b)), _, _) => a.partial_cmp(&b),
        (None, Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    };
    let ordering = ordering.ok_or_else(|| format!("cannot order {} against {}", type_name(l), type_name(r)))?;
    Ok(match op {
        CmpOp::Lt => ordering == Ordering::Less,
        CmpOp::Le => ordering != Ordering::Greater,
        CmpOp::Gt => ordering == Ordering::Greater,
        CmpOp::Ge => ordering != Ordering::Less,
        CmpOp::Eq | CmpOp::Ne => unreachable!("handled above"),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Literal(Value),
    /// Dot-separated segments, the first being the root word.
    Path(Vec<String>),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::LParen => f.write_str("'('"),
            Token::RParen => f.write_str("')'"),
            Token::Not => f.write_str("'!'"),
            Token::And => f.write_str("'&&'"),
            Token::Or => f.write_str("'||'"),
            Token::Cmp(op) => write!(f, "comparison {op:?}"),
            Token::Literal(v) => write!(f, "literal {v}"),
            Token::Path(p) => write!(f, "path {}", p.join(".")),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        let (token, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Token::LParen, 1),
            (')', _) => (Token::RParen, 1),
            ('&', Some('&')) => (Token::And, 2),
            ('|', Some('|')) => (Token::Or, 2),
            ('=', Some('=')) => (Token::Cmp(CmpOp::Eq), 2),
            ('!', Some('=')) => (Token::Cmp(CmpOp::Ne), 2),
            ('<', Some('=')) => (Token::Cmp(CmpOp::Le), 2),
            ('>', Some('=')) => (Token::Cmp(CmpOp::Ge), 2),
            ('!', _) => (Token::Not, 1),
            ('<', _) => (Token::Cmp(CmpOp::Lt), 1),
            ('>', _) => (Token::Cmp(CmpOp::Gt), 1),
            ('\'' | '"', _) => string_literal(&chars[i..])?,
            (c, _) if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                number_literal(&chars[i..])?
            }
            (c, _) if c.is_ascii_alphabetic() || c == '_' => word(&chars[i..])?,
            (c, _) => return Err(format!("unexpected character {c:?} at position {i}")),
        };
        tokens.push(token);
        i += len;
    }
    if tokens.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(tokens)
}

fn string_literal(chars: &[char]) -> Result<(Token, usize), String> {
    let quote = chars[0];
    let mut out = String::new();
    let mut i = 1;
    loop {
        match chars.get(i) {
            None => return Err("unterminated string".to_owned()),
            Some(&c) if c == quote => return Ok((Token::Literal(Value::String(out)), i + 1)),
            Some('\\') => {
                let escaped = match chars.get(i + 1) {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some(&c @ ('\\' | '\'' | '"')) => c,
                    other => {
                        return Err(format!("unknown escape \\{}", other.copied().unwrap_or(' ')));
                    }
                };
                out.push(escaped);
                i += 2;
            }
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

fn number_literal(chars: &[char]) -> Result<(Token, usize), String> {
    let len =
        1 + chars[1..].iter().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')).count();
    let text: String = chars[..len].iter().collect();
    let number = text
        .parse::<i64>()
        .map(serde_json::Number::from)
        .ok()
        .or_else(|| text.parse::<f64>().ok().and_then(serde_json::Number::from_f64))
        .ok_or_else(|| format!("{text:?} is not a number"))?;
    Ok((Token::Literal(Value::Number(number)), len))
}

fn word(chars: &[char]) -> Result<(Token, usize), String> {
    let len = chars.iter().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')).count();
    let text: String = chars[..len].iter().collect();
    let token = match text.as_str() {
        "true" | "True" => Token::Literal(Value::Bool(true)),
        "false" | "False" => Token::Literal(Value::Bool(false)),
        "null" | "none" | "None" => Token::Literal(Value::Null),
        _ => Token::Path(text.split('.').map(str::to_owned).collect()),
    };
    Ok((token, len))
}

fn resolve(segments: &[String], is_node: &dyn Fn(&str) -> bool) -> Result<ValuePath, String> {
    let shown = segments.join(".");
    if segments.iter().any(String::is_empty) {
        return Err(format!("path {shown:?} has an empty segment"));
    }
    match segments.first().map(String::as_str) {
        Some("input") => Ok(ValuePath { root: Root::Input, keys: segments[1..].to_vec() }),
        Some("results") => {
            let rest = &segments[1..];
            (1..=rest.len())
                .rev()
                .find(|&n| is_node(&rest[..n].join(".")))
                .map(|n| ValuePath { root: Root::Results(rest[..n].join(".")), keys: rest[n..].to_vec() })
                .ok_or_else(|| format!("path {shown:?} does not name a node of this DAG"))
        }
        _ => Err(format!("path {shown:?} must start with input or results")),
    }
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    is_node: &'t dyn Fn(&str) -> bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat(&mut self, token: &Token) -> bool {
        let hit = self.peek() == Some(token);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn or(&mut self, depth: usize) -> Result<Expr, String> {
        let mut items = vec![self.and(depth)?];
        while self.eat(&Token::Or) {
            items.push(self.and(depth)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::Or(items) })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut items = vec![self.unary(depth)?];
        while self.eat(&Token::And) {
            items.push(self.unary(depth)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::And(items) })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, String> {
        if self.eat(&Token::Not) {
            let depth = deeper(depth)?;
            return Ok(Expr::Not(Box::new(self.unary(depth)?)));
        }
        let left = self.primary(depth)?;
        let Some(Token::Cmp(op)) = self.peek().cloned() else {
            return Ok(left);
        };
        self.pos += 1;
        let right = self.primary(depth)?;
        Ok(Expr::Compare(Box::new(left), op, Box::new(right)))
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, String> {
        let token = self.peek().cloned().ok_or("ends where a value was expected")?;
        self.pos += 1;
        match token {
            Token::LParen => {
                let inner = self.or(deeper(depth)?)?;
                if !self.eat(&Token::RParen) {
                    return Err("missing ')'".to_owned());
                }
                Ok(inner)
            }
            Token::Literal(v) => Ok(Expr::Literal(v)),
            Token::Path(segments) => Ok(Expr::Path(resolve(&segments, self.is_node)?)),
            other => Err(format!("unexpected {other} where a value was expected")),
        }
    }
}

fn deeper(depth: usize) -> Result<usize, String> {
    if depth >= MAX_DEPTH {
        return Err(format!("nests deeper than {MAX_DEPTH} levels"));
    }
    Ok(depth + 1)
}

#[cfg(test)]
mod tests;
