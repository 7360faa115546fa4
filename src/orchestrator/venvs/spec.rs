//! What a venv request may say, checked before anything is made: names, requirement strings,
//! requirements files, templates, and the seed's provider/model names.
//!
//! Pure logic, no I/O. Package names never reach a shell (jobs run argv lists), but they are
//! still held to PEP 508's shape, so an option (`--index-url`), an editable (`-e`), a nested
//! file (`-r`), a local path or a URL cannot ride in as a "package".

use crate::error::Error;

/// A venv template, as data.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub packages: &'static [&'static str],
    /// Whether the venv gets its own pip (the admin venv does; others are installed into from
    /// outside, by the runtime's installer).
    pub with_pip: bool,
}

/// The original system's templates, plus the admin venv's.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "minimal",
        description: "an empty venv: the runtime's Python and the standard library",
        packages: &[],
        with_pip: false,
    },
    Template {
        name: "data-science",
        description: "numpy, pandas and matplotlib",
        packages: &["numpy", "pandas", "matplotlib"],
        with_pip: false,
    },
    Template {
        name: "machine-learning",
        description: "numpy, pandas, scipy and scikit-learn",
        packages: &["numpy", "pandas", "scipy", "scikit-learn"],
        with_pip: false,
    },
    Template {
        name: "web",
        description: "flask and requests",
        packages: &["flask", "requests"],
        with_pip: false,
    },
    Template {
        name: "admin",
        description: "management tools: pip and uv (and the beephost client once it exists)",
        packages: &["uv"],
        with_pip: true,
    },
];

/// The template called `name`.
pub fn template(name: &str) -> Result<&'static Template, Error> {
    TEMPLATES.iter().find(|t| t.name == name).ok_or_else(|| {
        let known: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        Error::invalid(
            "template",
            format!(
                "no template `{name}`; the templates are {}",
                known.join(", ")
            ),
        )
    })
}

/// Checks a venv name: `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "`{name}` is not a venv name: use 1-63 of a-z, 0-9, `_`, `.`, `-`, starting with a letter or digit"
            ),
        ))
    }
}

/// The venv name the seed's `/venv/create` means: `provider[-model]`, lowercased, with any
/// other character turned into `-`.
pub fn provider_venv_name(provider: &str, model: Option<&str>) -> Result<String, Error> {
    let raw = match model.map(str::trim).filter(|m| !m.is_empty()) {
        Some(model) => format!("{}-{model}", provider.trim()),
        None => provider.trim().to_string(),
    };
    let mut name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches(['-', '_', '.']).to_string();
    name.truncate(63);
    check_name(&name).map_err(|_| {
        Error::invalid("providerName", format!("`{raw}` does not make a venv name"))
    })?;
    Ok(name)
}

/// Why a requirement is refused.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// Not a requirement string at all (400).
    Malformed(String),
    /// Well-formed for pip, but not allowed here (422): options, paths, URLs.
    NotAllowed(String),
}

/// Checks one requirement string (`name[extras] (specifiers) ; marker`, or `name @ url` when
/// URLs are allowed). `field` names it in the error.
pub fn check_requirement(field: &str, spec: &str, allow_urls: bool) -> Result<(), Error> {
    classify(spec, allow_urls).map_err(|r| match r {
        Refusal::Malformed(why) => Error::invalid(field, format!("`{spec}` {why}")),
        Refusal::NotAllowed(why) => Error::Unprocessable(format!("{field}: `{spec}` {why}")),
    })
}

/// Checks a requirements file's text, line by line; returns it unchanged when every line is a
/// requirement, a comment or blank.
pub fn check_requirements(text: &str, allow_urls: bool) -> Result<(), Error> {
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        check_requirement(&format!("requirements line {}", i + 1), line, allow_urls)?;
    }
    Ok(())
}

/// The distribution name of a requirement string (for tracking what was asked for).
pub fn requirement_name(spec: &str) -> String {
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        .unwrap_or(spec.len());
    normalize(&spec[..end])
}

/// PEP 503 normalization: lowercase, runs of `-_.` become `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars() {
        if "-_.".contains(c) {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    // pip treats `#` as a comment at the start or after whitespace.
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #").or_else(|| line.find("\t#")) {
        Some(i) => &line[..i],
        None => line,
    }
}

fn classify(spec: &str, allow_urls: bool) -> Result<(), Refusal> {
    let s = spec.trim();
    if s.is_empty() {
        return Err(Refusal::Malformed("is empty".into()));
    }
    if s.starts_with('-') {
        return Err(Refusal::NotAllowed(
            "is an installer option; options (--index-url, -e, -r, …) are not accepted, \
             package sources are settings and request fields"
                .into(),
        ));
    }
    if s.contains("://") && !s.contains(" @ ") && !s.contains('@') {
        return Err(Refusal::NotAllowed(
            "is a URL; URL requirements need the allow-url-requirements setting".into(),
        ));
    }
    if s.starts_with('.')
        || s.starts_with('/')
        || s.starts_with('~')
        || s.contains('\\')
        || (!s.contains('@')
            && (s.contains('/')
                || s.ends_with(".whl")
                || s.ends_with(".tar.gz")
                || s.ends_with(".zip")))
    {
        return Err(Refusal::NotAllowed(
            "is a local path; install from a wheelhouse (find_links) by name instead".into(),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(Refusal::Malformed("contains a control character".into()));
    }
    // The name.
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"._-".contains(&bytes[i])) {
        i += 1;
    }
    let name = &s[..i];
    if name.is_empty()
        || !name.as_bytes()[0].is_ascii_alphanumeric()
        || !name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
    {
        return Err(Refusal::Malformed(
            "does not start with a package name".into(),
        ));
    }
    let mut rest = s[i..].trim_start();
    // Extras.
    if let Some(after) = rest.strip_prefix('[') {
        let Some(end) = after.find(']') else {
            return Err(Refusal::Malformed("has an unclosed `[`".into()));
        };
        let extras = &after[..end];
        let ok = extras.split(',').map(str::trim).all(|e| {
            !e.is_empty()
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if !ok {
            return Err(Refusal::Malformed(format!("has bad extras `[{extras}]`")));
        }
        rest = after[end + 1..].trim_start();
    }
    // A direct reference.
    if let Some(url) = rest.strip_prefix('@') {
        if !allow_urls {
            return Err(Refusal::NotAllowed(
                "is a URL requirement; they need the allow-url-requirements setting".into(),
            ));
        }
        let url = url.trim().split(';').next().unwrap_or("").trim();
        let scheme_ok = ["https://", "http://", "git+https://"]
            .iter()
            .any(|p| url.starts_with(p));
        if !scheme_ok || url.contains(char::is_whitespace) {
            return Err(Refusal::Malformed(format!("has a bad URL `{url}`")));
        }
        return Ok(());
    }
    if s.contains("://") {
        return Err(Refusal::NotAllowed(
            "is a URL; URL requirements need the allow-url-requirements setting".into(),
        ));
    }
    // Version specifiers, then an optional marker.
    let (specifiers, marker) = match rest.split_once(';') {
        Some((v, m)) => (v.trim(), Some(m.trim())),
        None => (rest.trim(), None),
    };
    let specifiers = specifiers
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(specifiers);
    if !specifiers.is_empty() {
        for clause in specifiers.split(',') {
            check_specifier(clause.trim())?;
        }
    }
    if let Some(marker) = marker {
        let ok = !marker.is_empty()
            && marker
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _.-'\"<>=!~()".contains(c));
        if !ok {
            return Err(Refusal::Malformed(format!(
                "has a bad environment marker `{marker}`"
            )));
        }
    }
    Ok(())
}

fn check_specifier(clause: &str) -> Result<(), Refusal> {
    let op = ["===", "==", "!=", "~=", ">=", "<=", ">", "<"]
        .iter()
        .find(|op| clause.starts_with(**op));
    let Some(op) = op else {
        return Err(Refusal::Malformed(format!(
            "has `{clause}` where a version specifier (like >=1.2) belongs"
        )));
    };
    let version = clause[op.len()..].trim();
    let ok = !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+*!".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal::Malformed(format!(
            "has a bad version in `{clause}`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn names() {
        for ok in ["ml", "a", "0", "data-science", "a_b.c-1", &"x".repeat(63)] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "-a",
            "_a",
            ".a",
            "A",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(64),
            "a;rm",
        ] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.class(), ErrorClass::BadRequest);
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn requirement_strings() {
        for ok in [
            "six",
            "numpy==1.26.4",
            "pandas>=2,<3",
            "requests[socks,security] >= 2.0",
            "scikit-learn ~= 1.4",
            "foo (>=1.0)",
            "bar; python_version >= '3.8'",
            "Zope.Interface",
            "pkg===1.0+local",
        ] {
            check_requirement("packages[0]", ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let malformed = [
            "",
            "==1.0",
            "six==",
            "six>>1",
            "six[",
            "six[a b]",
            "_six",
            "six; $(x)",
        ];
        for bad in malformed {
            let e = check_requirement("packages[2]", bad, false).unwrap_err();
            assert_eq!(e.class(), ErrorClass::BadRequest, "{bad}: {e}");
            assert!(e.to_string().starts_with("packages[2]"), "{e}");
        }
        let refused = [
            "--index-url=https://evil.example/simple",
            "-e .",
            "-r other.txt",
            "./local",
            "/abs/pkg.whl",
            "pkg.tar.gz",
            "https://example.com/x.whl",
            "six @ https://example.com/six.whl",
        ];
        for bad in refused {
            let e = check_requirement("packages[1]", bad, false).unwrap_err();
            assert_eq!(e.class(), ErrorClass::Unprocessable, "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        check_requirement("p", "six @ https://example.com/six.whl", true).unwrap();
        assert!(check_requirement("p", "six @ file:///etc/passwd", true).is_err());
    }

    #[test]
    fn requirements_files_name_the_line() {
        check_requirements("# tools\nsix==1.16.0  # pinned\n\nattrs\n", false).unwrap();
        let e = check_requirements("six\n--extra-index-url https://x\n", false).unwrap_err();
        assert!(e.to_string().contains("requirements line 2"), "{e}");
        let e = check_requirements("six\n\n-e git+https://x/y\n", false).unwrap_err();
        assert!(e.to_string().contains("requirements line 3"), "{e}");
    }

    #[test]
    fn provider_names_and_templates() {
        assert_eq!(
            provider_venv_name("OpenAI", Some("gpt-4o")).unwrap(),
            "openai-gpt-4o"
        );
        assert_eq!(
            provider_venv_name("hf", Some("meta-llama/Llama 3")).unwrap(),
            "hf-meta-llama-llama-3"
        );
        assert_eq!(provider_venv_name("local", None).unwrap(), "local");
        assert!(provider_venv_name("", None).is_err());
        assert_eq!(template("web").unwrap().packages, &["flask", "requests"]);
        assert!(template("nope")
            .unwrap_err()
            .to_string()
            .contains("data-science"));
        assert_eq!(requirement_name("Scikit_Learn>=1"), "scikit-learn");
        assert_eq!(normalize("Zope.Interface"), "zope-interface");
    }
}
