//! Plain-text tables: the first column left-aligned, the others right-aligned,
//! widths in characters (so `µs` and `≤` count once).

/// A table under construction.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    left: bool,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            left: false,
        }
    }

    /// Left-aligns every column (key/value listings).
    pub fn left(mut self) -> Self {
        self.left = true;
        self
    }

    /// Appends a row (missing cells print empty, extra cells are dropped).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells.into_iter().map(Into::into).collect();
        r.resize(self.headers.len(), String::new());
        self.rows.push(r);
    }

    /// The table as lines of text, with a rule under the headers.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut w: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(width(c));
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = " ".repeat(w[i] - width(c));
                if i > 0 {
                    out.push_str("  ");
                }
                if i == 0 || self.left {
                    out.push_str(c);
                    out.push_str(&pad);
                } else {
                    out.push_str(&pad);
                    out.push_str(c);
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        let total = w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn aligns_by_characters() {
        let mut t = Table::new(["case", "time"]);
        t.row(["a", "1.0 µs"]);
        t.row(["longer", "20 ns"]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "case      time");
        assert_eq!(lines[2], "a       1.0 µs");
        assert_eq!(lines[3], "longer   20 ns");
    }
}
