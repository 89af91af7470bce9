//! Quoting for the SQL text the server and the operator build: names that
//! cannot go as parameters (a publication, a table) and literals where SQL
//! wants one (`COMMENT ON`, a replication command's options). Anything else
//! goes as a query parameter.

/// Quotes an identifier: `my"table` -> `"my""table"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal: `it's` -> `'it''s'` (with
/// `standard_conforming_strings`, on by default since PostgreSQL 9.1, a
/// backslash is an ordinary character).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_double_their_quotes() {
        assert_eq!(quote_ident("plain"), r#""plain""#);
        assert_eq!(quote_ident(r#"my"pub"#), r#""my""pub""#);
        assert_eq!(quote_ident("Odd Schema"), r#""Odd Schema""#);
    }

    #[test]
    fn literals_double_their_single_quotes_only() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"'a\b'");
        assert_eq!(quote_literal(""), "''");
    }
}
