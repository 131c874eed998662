//! Rendering a valid DAG: YAML export and Mermaid diagrams.

use super::{Dag, ParseError};

impl Dag {
    /// The normalised definition as YAML; importing it gives a DAG with the same hash.
    pub fn to_yaml(&self) -> Result<String, ParseError> {
        self.definition.to_yaml()
    }

    /// A Mermaid flowchart (`graph TD`): one box per node (in id order) labelled with its id and
    /// agent, one arrow per dependency. Boxes are named `n0, n1, ...` by id order and labels are
    /// escaped, so no id or agent text can break out of its label.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("graph TD\n");
        let mut box_of = vec![0usize; self.len()];
        for (b, &i) in self.by_id().iter().enumerate() {
            box_of[i as usize] = b;
            let label = format!("{}<br/>{}", escape(self.node_id(i)), escape(&self.node_spec(i).agent_id));
            out.push_str(&format!("    n{b}[\"{label}\"]\n"));
        }
        for &v in self.order() {
            for &d in &self.node(v).deps {
                out.push_str(&format!("    n{} --> n{}\n", box_of[d as usize], box_of[v as usize]));
            }
        }
        out
    }
}

/// Mermaid entity escapes for the characters that end or alter a quoted label.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' => out.push_str("#35;"),
            '&' => out.push_str("#amp;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}
