//! Running external tools. Every failure names the tool, its arguments and
//! the end of what it printed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} was not found: {hint}")]
    Missing { tool: String, hint: String },
    #[error("could not start {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}):\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
}

fn hint(tool: &str) -> String {
    let pkg = match tool {
        "mmdebstrap" => "mmdebstrap",
        "mksquashfs" => "squashfs-tools",
        "mkfs.erofs" => "erofs-utils",
        "mkfs.ext4" => "e2fsprogs",
        "qemu-img" => "qemu-utils",
        "tar" => "tar",
        _ => "",
    };
    if pkg.is_empty() {
        "run scripts/setup.sh to install basalt's tools".to_string()
    } else {
        format!(
            "install the Debian package {pkg} (scripts/setup.sh installs every tool basalt needs)"
        )
    }
}

/// Runs `cmd` to completion, capturing its output. `cmd`'s program is the tool name.
pub fn run(cmd: &mut Command) -> Result<String, ToolError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let command = render(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ToolError::Missing {
                hint: hint(&tool),
                tool: tool.clone(),
            },
            _ => ToolError::Spawn {
                tool: tool.clone(),
                source,
            },
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ToolError::Failed {
            command,
            status: out.status.to_string(),
            output: tail(&text, 40),
        })
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_word(a));
    }
    s
}

fn shell_word(a: &OsStr) -> String {
    let t = a.to_string_lossy();
    if t.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
        && !t.is_empty()
    {
        t.into_owned()
    } else {
        format!("'{}'", t.replace('\'', r"'\''"))
    }
}

/// True when `tool` can be found on `PATH`.
pub fn exists(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join(tool))))
        .unwrap_or(false)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_and_show_output() {
        let e = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("sh -c 'echo oops >&2; exit 3' failed"), "{s}");
        assert!(s.contains("oops"), "{s}");
    }

    #[test]
    fn missing_tool_says_how_to_get_it() {
        let e = run(&mut Command::new("basalt-no-such-tool")).unwrap_err();
        assert!(matches!(e, ToolError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("scripts/setup.sh"));
    }
}
