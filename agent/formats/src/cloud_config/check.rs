//! The rules: raw [`CloudConfigFile`] in, checked [`CloudConfig`] out.

use super::file::{
    BasaltFile, CloudConfigFile, CommandFile, EncodingFile, StringOrList, SudoFile, UpdateFile,
    UserFile, WriteFileFile,
};
use super::value::{ValueError, WritePath};
use super::{
    AllowedClient, ApiToken, Basalt, CloudConfig, CloudConfigError, Command, Health, HealthCheck,
    Hostname, Inference, Install, Mesh, Model, Ntp, Owner, SshPublicKey, Update, User, UserName,
    WriteFile, DEFAULT_HEALTH_TIMEOUT_S, DEFAULT_POLL_INTERVAL_S, MAX_FILE_BYTES,
    MAX_HEALTH_TIMEOUT_S, SUPPORTED_BASALT_VERSIONS,
};
use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::{alphabet, DecodeError, Engine};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::str::FromStr;

type Result<T> = std::result::Result<T, CloudConfigError>;

/// Names the source in every error.
struct Ctx<'a> {
    source_name: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> CloudConfigError {
        CloudConfigError::Invalid {
            source_name: self.source_name.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn value<T: FromStr<Err = ValueError>>(&self, field: &str, s: &str) -> Result<T> {
        s.parse().map_err(|e: ValueError| self.err(field, e.0))
    }

    fn small(&self, field: &str, n: u64) -> Result<u32> {
        u32::try_from(n).map_err(|_| self.err(field, format!("{n} is too large")))
    }

    fn positive(&self, field: &str, n: u64) -> Result<u64> {
        if n == 0 {
            return Err(self.err(field, "must be at least 1"));
        }
        Ok(n)
    }
}

pub(super) fn check(source_name: &str, file: CloudConfigFile) -> Result<CloudConfig> {
    let cx = Ctx { source_name };
    let hostname = file
        .hostname
        .as_deref()
        .map(|h| cx.value::<Hostname>("hostname", h))
        .transpose()?;
    let fqdn = match file.fqdn.as_deref() {
        None => None,
        Some(f) => {
            let fqdn: Hostname = cx.value("fqdn", f)?;
            if !f.contains('.') {
                return Err(cx.err(
                    "fqdn",
                    format!("{f:?} has no domain; set a short name with `hostname`"),
                ));
            }
            Some(fqdn)
        }
    };
    let mut users = Vec::new();
    let mut user_names = BTreeMap::new();
    for (i, u) in file.users.unwrap_or_default().into_iter().enumerate() {
        let field = format!("users[{i}]");
        let user = check_user(&cx, &field, u)?;
        if let Some(first) = user_names.insert(user.name.clone(), i) {
            return Err(cx.err(
                &format!("{field}.name"),
                format!("user {} is already defined in users[{first}]", user.name),
            ));
        }
        users.push(user);
    }
    let ssh_authorized_keys = check_keys(
        &cx,
        "ssh_authorized_keys",
        file.ssh_authorized_keys.unwrap_or_default(),
    )?;
    let mut write_files = Vec::new();
    let mut paths = BTreeMap::new();
    for (i, w) in file.write_files.unwrap_or_default().into_iter().enumerate() {
        let field = format!("write_files[{i}]");
        let wf = check_write_file(&cx, &field, w)?;
        if let Some(first) = paths.insert(wf.path.clone(), i) {
            return Err(cx.err(
                &format!("{field}.path"),
                format!(
                    "{} is also written by write_files[{first}]; give each file once",
                    wf.path
                ),
            ));
        }
        write_files.push(wf);
    }
    let bootcmd = check_commands(&cx, "bootcmd", file.bootcmd.unwrap_or_default())?;
    let runcmd = check_commands(&cx, "runcmd", file.runcmd.unwrap_or_default())?;
    let timezone = file
        .timezone
        .as_deref()
        .map(|t| cx.value("timezone", t))
        .transpose()?;
    let ntp = match file.ntp {
        None => None,
        Some(n) => Some(Ntp {
            enabled: n.enabled.unwrap_or(true),
            servers: check_ntp_hosts(&cx, "ntp.servers", n.servers.unwrap_or_default())?,
            pools: check_ntp_hosts(&cx, "ntp.pools", n.pools.unwrap_or_default())?,
        }),
    };
    let basalt = file.basalt.map(|b| check_basalt(&cx, b)).transpose()?;
    Ok(CloudConfig {
        hostname,
        fqdn,
        users,
        ssh_authorized_keys,
        write_files,
        bootcmd,
        runcmd,
        timezone,
        ntp,
        basalt,
    })
}

fn one_line(cx: &Ctx, field: &str, s: &str, what: &str) -> Result<()> {
    if s.contains(['\n', '\r', '\0']) {
        return Err(cx.err(field, format!("{what} must be one line")));
    }
    Ok(())
}

fn check_user(cx: &Ctx, field: &str, u: UserFile) -> Result<User> {
    let name: UserName = cx.value(&format!("{field}.name"), &u.name)?;
    if let Some(g) = &u.gecos {
        one_line(cx, &format!("{field}.gecos"), g, "gecos")?;
        if g.contains(':') {
            return Err(cx.err(&format!("{field}.gecos"), "gecos must not contain ':'"));
        }
    }
    let group_names: Vec<(String, String)> = match u.groups {
        None => Vec::new(),
        Some(StringOrList::One(s)) => s
            .split(',')
            .map(|g| (format!("{field}.groups"), g.trim().to_string()))
            .collect(),
        Some(StringOrList::Many(v)) => v
            .into_iter()
            .enumerate()
            .map(|(i, g)| (format!("{field}.groups[{i}]"), g))
            .collect(),
    };
    let mut groups = Vec::new();
    for (f, g) in group_names {
        let g: UserName = g.parse().map_err(|_| {
            cx.err(
                &f,
                format!(
                    "{g:?} is not a valid group name: 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'"
                ),
            )
        })?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let passwd = u
        .passwd
        .as_deref()
        .map(|p| cx.value(&format!("{field}.passwd"), p))
        .transpose()?;
    let ssh_authorized_keys = check_keys(
        cx,
        &format!("{field}.ssh_authorized_keys"),
        u.ssh_authorized_keys.unwrap_or_default(),
    )?;
    let sudo_field = format!("{field}.sudo");
    let sudo = match u.sudo {
        None | Some(SudoFile::Bool(false)) => Vec::new(),
        Some(SudoFile::Bool(true)) => {
            return Err(cx.err(
                &sudo_field,
                "true is not a sudoers rule; write one such as \"ALL=(ALL) NOPASSWD:ALL\", or false for none",
            ))
        }
        Some(SudoFile::One(s)) => vec![s],
        Some(SudoFile::Many(v)) => v,
    };
    for (i, rule) in sudo.iter().enumerate() {
        let f = if sudo.len() == 1 {
            sudo_field.clone()
        } else {
            format!("{sudo_field}[{i}]")
        };
        one_line(cx, &f, rule, "a sudoers rule")?;
        if rule.trim().is_empty() {
            return Err(cx.err(&f, "a sudoers rule must not be empty"));
        }
    }
    if let Some(shell) = &u.shell {
        if !shell.starts_with('/') || shell.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err(cx.err(
                &format!("{field}.shell"),
                format!("{shell:?} is not an absolute path to a shell, such as /bin/bash"),
            ));
        }
    }
    Ok(User {
        name,
        gecos: u.gecos,
        groups,
        passwd,
        lock_passwd: u.lock_passwd.unwrap_or(true),
        ssh_authorized_keys,
        sudo,
        shell: u.shell,
    })
}

/// Parses each key; a key given twice (same type and data) is kept once.
fn check_keys(cx: &Ctx, field: &str, keys: Vec<String>) -> Result<Vec<SshPublicKey>> {
    let mut out: Vec<SshPublicKey> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let key: SshPublicKey = cx.value(&format!("{field}[{i}]"), k)?;
        if !out.iter().any(|o| o.identity() == key.identity()) {
            out.push(key);
        }
    }
    Ok(out)
}

fn check_write_file(cx: &Ctx, field: &str, w: WriteFileFile) -> Result<WriteFile> {
    let path: WritePath = cx.value(&format!("{field}.path"), &w.path)?;
    let content_field = format!("{field}.content");
    let text = w.content.unwrap_or_default();
    let content = match w.encoding.unwrap_or_default() {
        EncodingFile::Text => text.into_bytes(),
        EncodingFile::Base64 => decode_base64(&text).map_err(|r| cx.err(&content_field, r))?,
        EncodingFile::GzipBase64 => {
            let gz = decode_base64(&text).map_err(|r| cx.err(&content_field, r))?;
            gunzip(&gz).map_err(|r| cx.err(&content_field, r))?
        }
    };
    if content.len() > MAX_FILE_BYTES {
        return Err(cx.err(
            &content_field,
            format!(
                "{} bytes is more than the {} MiB a written file may hold",
                content.len(),
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    let mode = match &w.permissions {
        None => 0o644,
        Some(p) => parse_mode(p).map_err(|r| cx.err(&format!("{field}.permissions"), r))?,
    };
    let owner = match &w.owner {
        None => Owner::root(),
        Some(o) => parse_owner(o).map_err(|r| cx.err(&format!("{field}.owner"), r))?,
    };
    let append = w.append.unwrap_or(false);
    let reapply = w.reapply.unwrap_or(false);
    if append && reapply {
        return Err(cx.err(
            &format!("{field}.reapply"),
            "append and reapply together would append the content again on every boot",
        ));
    }
    Ok(WriteFile {
        path,
        content,
        mode,
        owner,
        append,
        reapply,
    })
}

/// Standard base64, line breaks and spaces allowed (YAML block scalars),
/// padding optional. Errors give the byte offset in the written text.
pub(super) fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let kept: Vec<(usize, u8)> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| !b.is_ascii_whitespace())
        .collect();
    let compact: Vec<u8> = kept.iter().map(|&(_, b)| b).collect();
    let at = |i: usize| kept.get(i).map(|&(o, _)| o).unwrap_or(text.len());
    ENGINE.decode(&compact).map_err(|e| match e {
        DecodeError::InvalidByte(i, b) => format!(
            "invalid base64 at byte {}: {:?} is not a base64 character",
            at(i),
            b as char
        ),
        DecodeError::InvalidLastSymbol(i, b) => format!(
            "invalid base64 at byte {}: {:?} cannot end the data (truncated?)",
            at(i),
            b as char
        ),
        DecodeError::InvalidLength(n) => {
            format!("invalid base64: {n} characters cannot be a whole encoding (truncated?)")
        }
        DecodeError::InvalidPadding => "invalid base64: wrong '=' padding".to_string(),
    })
}

fn gunzip(gz: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if gz.is_empty() {
        return Err("invalid gzip data: empty".to_string());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip data: {e}"))?;
    Ok(out)
}

/// `"0644"`, `"0o644"`, `"04755"`: octal with a leading `0` (so a decimal
/// number is never read as octal), at most `0o7777`.
fn parse_mode(p: &str) -> std::result::Result<u32, String> {
    let digits = p
        .strip_prefix("0o")
        .or_else(|| p.strip_prefix('0').filter(|d| !d.is_empty()))
        .or(if p == "0" { Some("0") } else { None });
    let reason = || {
        format!(
            "{p:?} is not an octal mode: write it as a string with a leading 0, such as \"0644\""
        )
    };
    let digits = digits.ok_or_else(reason)?;
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(reason());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| reason())?;
    if mode > 0o7777 {
        return Err(format!("{p:?} is larger than 07777"));
    }
    Ok(mode)
}

fn parse_owner(o: &str) -> std::result::Result<Owner, String> {
    let (u, g) = o
        .split_once(':')
        .ok_or_else(|| format!("{o:?} is not user:group (such as \"root:root\")"))?;
    let user = u
        .parse()
        .map_err(|e: ValueError| format!("{o:?}: user {e}"))?;
    let group = g
        .parse()
        .map_err(|e: ValueError| format!("{o:?}: group {e}"))?;
    Ok(Owner { user, group })
}

fn check_commands(cx: &Ctx, field: &str, items: Vec<CommandFile>) -> Result<Vec<Command>> {
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        match item {
            StringOrList::One(s) => {
                if s.trim().is_empty() {
                    return Err(cx.err(&f, "an empty command"));
                }
                if s.contains('\0') {
                    return Err(cx.err(&f, "a command must not contain NUL"));
                }
                out.push(Command::Shell(s));
            }
            StringOrList::Many(argv) => {
                if argv.first().is_none_or(|a| a.is_empty()) {
                    return Err(cx.err(&f, "an argv list needs a program as its first item"));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(cx.err(&f, "a command must not contain NUL"));
                }
                out.push(Command::Argv(argv));
            }
        }
    }
    Ok(out)
}

fn check_ntp_hosts(cx: &Ctx, field: &str, hosts: Vec<String>) -> Result<Vec<String>> {
    for (i, h) in hosts.iter().enumerate() {
        if h.parse::<std::net::IpAddr>().is_err() {
            cx.value::<Hostname>(&format!("{field}[{i}]"), h)?;
        }
    }
    Ok(hosts)
}

fn check_basalt(cx: &Ctx, b: BasaltFile) -> Result<Basalt> {
    let version = match b.version {
        None => {
            return Err(cx.err(
                "basalt.version",
                "missing; the basalt section starts with `version: 1`",
            ))
        }
        Some(v) if !SUPPORTED_BASALT_VERSIONS.contains(&v) => {
            return Err(CloudConfigError::UnsupportedVersion {
                source_name: cx.source_name.to_string(),
                found: v,
            })
        }
        Some(v) => v,
    };
    let alias = b
        .alias
        .as_deref()
        .map(|a| cx.value("basalt.alias", a))
        .transpose()?;
    let mesh = b
        .mesh
        .map(|m| -> Result<Mesh> {
            Ok(Mesh {
                token: cx.value("basalt.mesh.token", &m.token)?,
            })
        })
        .transpose()?;
    let update = b.update.map(|u| check_update(cx, u)).transpose()?;
    let models = b
        .models
        .map(|models| -> Result<Vec<Model>> {
            let mut out: Vec<Model> = Vec::new();
            for (i, m) in models.into_iter().enumerate() {
                let f = format!("basalt.models[{i}]");
                let name = cx.value(&format!("{f}.name"), &m.name)?;
                if let Some(j) = out.iter().position(|o| o.name == name) {
                    return Err(cx.err(
                        &format!("{f}.name"),
                        format!("model {name} is already listed in basalt.models[{j}]"),
                    ));
                }
                let sha256 = parse_sha256(&m.sha256).ok_or_else(|| {
                    cx.err(
                        &format!("{f}.sha256"),
                        format!("{:?} is not a SHA-256: write 64 hex digits", m.sha256),
                    )
                })?;
                let batch_max = m
                    .batch_max
                    .map(|n| {
                        let field = format!("{f}.batch_max");
                        cx.positive(&field, n).and_then(|n| cx.small(&field, n))
                    })
                    .transpose()?;
                out.push(Model {
                    name,
                    url: cx.value(&format!("{f}.url"), &m.url)?,
                    sha256,
                    batch_max,
                });
            }
            Ok(out)
        })
        .transpose()?;
    let inference = b
        .inference
        .map(|i| -> Result<Inference> {
            let f = |k: &str| format!("basalt.inference.{k}");
            Ok(Inference {
                max_request_bytes: i
                    .max_request_bytes
                    .map(|n| cx.positive(&f("max_request_bytes"), n))
                    .transpose()?,
                queue_capacity: i
                    .queue_capacity
                    .map(|n| {
                        cx.positive(&f("queue_capacity"), n)
                            .and_then(|n| cx.small(&f("queue_capacity"), n))
                    })
                    .transpose()?,
                timeout_ms: i
                    .timeout_ms
                    .map(|n| cx.positive(&f("timeout_ms"), n))
                    .transpose()?,
                threads: i
                    .threads
                    .map(|n| {
                        cx.positive(&f("threads"), n)
                            .and_then(|n| cx.small(&f("threads"), n))
                    })
                    .transpose()?,
            })
        })
        .transpose()?;
    let health = b
        .health
        .map(|h| -> Result<Health> {
            let mut checks: Vec<HealthCheck> = Vec::new();
            for (i, c) in h.checks.into_iter().enumerate() {
                let f = format!("basalt.health.checks[{i}]");
                let name = cx.value(&format!("{f}.name"), &c.name)?;
                if let Some(j) = checks.iter().position(|o| o.name == name) {
                    return Err(cx.err(
                        &format!("{f}.name"),
                        format!("check {name} is already defined in basalt.health.checks[{j}]"),
                    ));
                }
                if c.command.first().is_none_or(|a| a.is_empty()) {
                    return Err(cx.err(
                        &format!("{f}.command"),
                        "an argv list needs a program as its first item",
                    ));
                }
                let timeout_s = c.timeout_s.unwrap_or(DEFAULT_HEALTH_TIMEOUT_S);
                if !(1..=MAX_HEALTH_TIMEOUT_S).contains(&timeout_s) {
                    return Err(cx.err(
                        &format!("{f}.timeout_s"),
                        format!("{timeout_s} is not between 1 and {MAX_HEALTH_TIMEOUT_S} seconds"),
                    ));
                }
                checks.push(HealthCheck {
                    name,
                    command: c.command,
                    timeout_s,
                });
            }
            Ok(Health { checks })
        })
        .transpose()?;
    let allowed_clients = b
        .allowed_clients
        .map(|clients| -> Result<Vec<AllowedClient>> {
            let mut out: Vec<AllowedClient> = Vec::new();
            for (i, c) in clients.into_iter().enumerate() {
                let f = format!("basalt.allowed_clients[{i}]");
                let client = AllowedClient {
                    key: cx.value(&format!("{f}.key"), &c.key)?,
                    alias: c
                        .alias
                        .as_deref()
                        .map(|a| cx.value(&format!("{f}.alias"), a))
                        .transpose()?,
                };
                if let Some(j) = out.iter().position(|o| o.key == client.key) {
                    return Err(cx.err(
                        &format!("{f}.key"),
                        format!("the key is already listed in basalt.allowed_clients[{j}]"),
                    ));
                }
                if let Some(j) = out
                    .iter()
                    .position(|o| o.alias.is_some() && o.alias == client.alias)
                {
                    return Err(cx.err(
                        &format!("{f}.alias"),
                        format!("the alias is already used by basalt.allowed_clients[{j}]"),
                    ));
                }
                out.push(client);
            }
            Ok(out)
        })
        .transpose()?;
    let api_tokens = b
        .api_tokens
        .map(|tokens| -> Result<Vec<ApiToken>> {
            let mut out: Vec<ApiToken> = Vec::new();
            for (i, t) in tokens.into_iter().enumerate() {
                let f = format!("basalt.api_tokens[{i}]");
                let token = ApiToken {
                    name: cx.value(&format!("{f}.name"), &t.name)?,
                    sha256: parse_sha256(&t.sha256).ok_or_else(|| {
                        cx.err(
                            &format!("{f}.sha256"),
                            format!(
                                "{:?} is not a SHA-256: write 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                                t.sha256
                            ),
                        )
                    })?,
                };
                if let Some(j) = out.iter().position(|o| o.name == token.name) {
                    return Err(cx.err(
                        &format!("{f}.name"),
                        format!("the name is already used by basalt.api_tokens[{j}]"),
                    ));
                }
                if let Some(j) = out.iter().position(|o| o.sha256 == token.sha256) {
                    return Err(cx.err(
                        &format!("{f}.sha256"),
                        format!("the same token is already listed in basalt.api_tokens[{j}]"),
                    ));
                }
                out.push(token);
            }
            Ok(out)
        })
        .transpose()?;
    let install = b
        .install
        .map(|i| -> Result<Install> {
            Ok(Install {
                device: i
                    .device
                    .parse()
                    .map_err(|e: String| cx.err("basalt.install.device", e))?,
                reboot: i.reboot.unwrap_or(true),
            })
        })
        .transpose()?;
    Ok(Basalt {
        version,
        alias,
        mesh,
        update,
        models,
        inference,
        health,
        allowed_clients,
        api_tokens,
        install,
    })
}

fn check_update(cx: &Ctx, u: UpdateFile) -> Result<Update> {
    let channel = cx.value("basalt.update.channel", &u.channel)?;
    if u.trusted_keys.is_empty() {
        return Err(cx.err(
            "basalt.update.trusted_keys",
            "at least one key is needed to verify updates",
        ));
    }
    let mut trusted_keys = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, k) in u.trusted_keys.iter().enumerate() {
        let f = format!("basalt.update.trusted_keys[{i}]");
        let key = cx.value(&f, k)?;
        if !seen.insert(key) {
            return Err(cx.err(
                &f,
                "the key is listed twice, which would let one signer count twice",
            ));
        }
        trusted_keys.push(key);
    }
    let threshold = u.threshold.unwrap_or(1);
    if threshold == 0 || threshold > trusted_keys.len() as u64 {
        return Err(cx.err(
            "basalt.update.threshold",
            format!(
                "{threshold} is not between 1 and the number of trusted keys ({})",
                trusted_keys.len()
            ),
        ));
    }
    let poll_interval = cx.positive(
        "basalt.update.poll_interval",
        u.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL_S),
    )?;
    Ok(Update {
        channel,
        trusted_keys,
        threshold: threshold as u32,
        poll_interval,
        share: u.share,
    })
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}
