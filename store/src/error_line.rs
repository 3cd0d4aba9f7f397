//! An error as the one line a program prints: the error and its causes, each cause once.

/// An error and its causes on one line, each cause once: most of our errors already quote their
/// cause, which `{:#}` would print a second time.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = error.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn causes_come_once_each_in_order() {
        let quoted = Outer("a.png", std::io::Error::other("a.png"));
        assert_eq!(one_line(&quoted), "cannot read a.png");
        let apart = Outer("b.png", std::io::Error::other("denied"));
        assert_eq!(one_line(&apart), "cannot read b.png: denied");
    }
}
