//! The block-device layout: diskimage-builder's YAML subset, parsed into plain types.
//!
//! Both of DIB's spellings are read. In the *tree* form a partition carries its
//! `mkfs`, the `mkfs` its `mount` and the `mount` its `fstab`; in the *graph* form
//! they are top-level entries that name their parent with `base`. Names that are not
//! given are made up as DIB does (`mkfs_root` for the mkfs of partition `root`), so
//! the DIB defaults apply: `mkfs_root` is ext4 labelled `cloudimg-rootfs` unless told
//! otherwise. Every error names the entry and key it is about.

use serde_yaml_ng::{Mapping, Value};

use super::size::{SizeSpec, parse_absolute, parse_size_spec};
use super::types::{PartitionType, parse_gpt_type, parse_mbr_type};
use crate::fs::FsType;

/// A problem with a layout, naming the key (`[1].partitioning.partitions[0].size`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("block-device layout: {key}: {problem}")]
pub struct LayoutError {
    pub key: String,
    pub problem: String,
}

fn err<T>(key: &str, problem: impl Into<String>) -> Result<T, LayoutError> {
    Err(LayoutError {
        key: key.to_string(),
        problem: problem.into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// A whole layout: one image with one partition table.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// `local_loop.name` (DIB's `image0`).
    pub image_name: String,
    /// `local_loop.size`; `None`: computed from the tree.
    pub image_size: Option<u64>,
    pub table: TableKind,
    /// In table order (partition 1 first).
    pub partitions: Vec<PartitionLayout>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLayout {
    pub name: String,
    /// Where the partition was written in the YAML, for errors.
    pub key: String,
    pub partition_type: PartitionType,
    pub size: SizeSpec,
    /// `flags: [boot]`: MBR active flag, GPT legacy-BIOS-bootable attribute.
    pub boot: bool,
    pub filesystem: Option<FilesystemLayout>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemLayout {
    /// The mkfs node's name (`mkfs_root`).
    pub name: String,
    pub fs_type: FsType,
    pub label: String,
    /// `None`: derived from the build seed.
    pub uuid: Option<uuid::Uuid>,
    /// Extra mkfs arguments (`opts`, split on white space).
    pub opts: Vec<String>,
    pub mount: Option<MountLayout>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MountLayout {
    /// Absolute, normalised (`/boot/efi`, no trailing slash except `/`).
    pub mount_point: String,
    /// `None`: no /etc/fstab line (as in DIB).
    pub fstab: Option<FstabLayout>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FstabLayout {
    pub options: String,
    pub dump_freq: u32,
    pub fsck_passno: u32,
}

impl Layout {
    /// Parse a layout from the YAML value of a `block-device-*.yaml` file (a list).
    pub fn from_yaml(value: &Value) -> Result<Layout, LayoutError> {
        let nodes = flatten(value)?;
        resolve(nodes)
    }

    /// Parse YAML text.
    pub fn from_yaml_str(text: &str) -> Result<Layout, LayoutError> {
        let value: Value =
            serde_yaml_ng::from_str(text).or_else(|e| err("(document)", e.to_string()))?;
        Layout::from_yaml(&value)
    }

    /// The partition holding `/`.
    pub fn root_partition(&self) -> Option<&PartitionLayout> {
        self.partitions.iter().find(|p| {
            p.filesystem
                .as_ref()
                .and_then(|f| f.mount.as_ref())
                .is_some_and(|m| m.mount_point == "/")
        })
    }
}

/// The plugin keys of DIB's config that kiln implements.
const NODE_KINDS: &[&str] = &["local_loop", "partitioning", "mkfs", "mount", "fstab"];
/// DIB plugins kiln does not implement, named in errors.
const UNSUPPORTED_KINDS: &[&str] = &["lvm", "mdraid"];

/// One entry of the graph form.
#[derive(Debug)]
struct Node {
    kind: &'static str,
    name: String,
    base: Option<String>,
    /// Non-plugin keys.
    values: Mapping,
    /// Where it came from, for errors.
    key: String,
    /// For partitioning: the partitions (each with its own values and key).
    partitions: Vec<(Mapping, String)>,
}

fn node_kind(key: &str, at: &str) -> Result<Option<&'static str>, LayoutError> {
    if let Some(kind) = NODE_KINDS.iter().find(|k| **k == key) {
        return Ok(Some(kind));
    }
    if UNSUPPORTED_KINDS.contains(&key) {
        return err(
            at,
            format!(
                "{key:?} is not supported by kiln (supported: {})",
                NODE_KINDS.join(", ")
            ),
        );
    }
    Ok(None)
}

fn string_of(value: &Value, key: &str) -> Result<String, LayoutError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => err(key, "expected a string"),
    }
}

/// Turn the list of entries (tree or graph form) into graph nodes.
fn flatten(value: &Value) -> Result<Vec<Node>, LayoutError> {
    let Value::Sequence(entries) = value else {
        return err("(document)", "a block-device layout is a list of entries");
    };
    let mut nodes = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("[{i}]");
        let (kind, body) = single_key(entry, &at)?;
        let key = format!("{at}.{kind}");
        let Some(kind) = node_kind(&kind, &key)? else {
            return err(
                &key,
                format!("unknown entry (expected one of {})", NODE_KINDS.join(", ")),
            );
        };
        recurse(kind, body, None, &key, &mut nodes)?;
    }
    Ok(nodes)
}

fn single_key(entry: &Value, at: &str) -> Result<(String, Value), LayoutError> {
    let Value::Mapping(map) = entry else {
        return err(at, "each entry is a mapping with one key");
    };
    if map.len() != 1 {
        return err(
            at,
            format!("each entry has exactly one key, this one has {}", map.len()),
        );
    }
    let (k, v) = map.iter().next().expect("one entry");
    Ok((string_of(k, at)?, v.clone()))
}

fn recurse(
    kind: &'static str,
    body: Value,
    parent: Option<&str>,
    key: &str,
    out: &mut Vec<Node>,
) -> Result<(), LayoutError> {
    let Value::Mapping(body) = body else {
        return err(key, "expected a mapping");
    };
    let base = match body.get("base") {
        Some(b) => Some(string_of(b, &format!("{key}.base"))?),
        None => parent.map(str::to_string),
    };
    let name = match body.get("name") {
        Some(n) => string_of(n, &format!("{key}.name"))?,
        None => match &base {
            Some(b) => format!("{kind}_{b}"),
            None if kind == "local_loop" => "image0".to_string(),
            None => return err(key, "needs a name or a base"),
        },
    };
    let mut node = Node {
        kind,
        name: name.clone(),
        base,
        values: Mapping::new(),
        key: key.to_string(),
        partitions: Vec::new(),
    };
    let mut children = Vec::new();
    for (k, v) in body {
        let k = string_of(&k, key)?;
        let child_key = format!("{key}.{k}");
        if kind == "partitioning" && k == "partitions" {
            let Value::Sequence(parts) = v else {
                return err(&child_key, "expected a list of partitions");
            };
            for (j, part) in parts.into_iter().enumerate() {
                let part_key = format!("{child_key}[{j}]");
                let Value::Mapping(part) = part else {
                    return err(&part_key, "expected a mapping");
                };
                let part_name = match part.get("name") {
                    Some(n) => string_of(n, &format!("{part_key}.name"))?,
                    None => return err(&part_key, "a partition needs a name"),
                };
                let mut own = Mapping::new();
                for (pk, pv) in part {
                    let pk_s = string_of(&pk, &part_key)?;
                    let pk_key = format!("{part_key}.{pk_s}");
                    match node_kind(&pk_s, &pk_key)? {
                        Some(child) => children.push((child, pv, Some(part_name.clone()), pk_key)),
                        None => {
                            own.insert(pk, pv);
                        }
                    }
                }
                node.partitions.push((own, part_key));
            }
        } else if let Some(child) = node_kind(&k, &child_key)? {
            children.push((child, v, Some(name.clone()), child_key));
        } else {
            node.values.insert(Value::String(k), v);
        }
    }
    out.push(node);
    for (child, body, parent, child_key) in children {
        recurse(child, body, parent.as_deref(), &child_key, out)?;
    }
    Ok(())
}

/// Reject keys kiln does not know, so a typo does not pass silently.
fn check_keys(values: &Mapping, known: &[&str], key: &str) -> Result<(), LayoutError> {
    for k in values.keys() {
        let k = string_of(k, key)?;
        if !known.contains(&k.as_str()) {
            return err(
                &format!("{key}.{k}"),
                format!(
                    "unknown or unsupported key (known here: {})",
                    known.join(", ")
                ),
            );
        }
    }
    Ok(())
}

fn get_string(values: &Mapping, name: &str, key: &str) -> Result<Option<String>, LayoutError> {
    values
        .get(name)
        .map(|v| string_of(v, &format!("{key}.{name}")))
        .transpose()
}

fn get_u32(values: &Mapping, name: &str, key: &str, default: u32) -> Result<u32, LayoutError> {
    match values.get(name) {
        None => Ok(default),
        Some(v) => {
            let at = format!("{key}.{name}");
            string_of(v, &at)?
                .trim()
                .parse()
                .or_else(|_| err(&at, "expected a small whole number"))
        }
    }
}

/// Assemble the graph nodes into one [`Layout`], checking references and limits.
fn resolve(nodes: Vec<Node>) -> Result<Layout, LayoutError> {
    let mut by_name: std::collections::HashMap<&str, &Node> = std::collections::HashMap::new();
    for node in &nodes {
        if let Some(other) = by_name.insert(&node.name, node) {
            return err(
                &node.key,
                format!("name {:?} is also used by {}", node.name, other.key),
            );
        }
    }
    let of_kind = |kind: &'static str| nodes.iter().filter(move |n| n.kind == kind);

    let loops: Vec<&Node> = of_kind("local_loop").collect();
    let image = match loops.as_slice() {
        [one] => *one,
        [] => return err("(document)", "no local_loop entry (the image file)"),
        [_, second, ..] => return err(&second.key, "only one local_loop (image) is supported"),
    };
    check_keys(&image.values, &["name", "size"], &image.key)?;
    let image_size = match get_string(&image.values, "size", &image.key)? {
        None => None,
        Some(text) => {
            let at = format!("{}.size", image.key);
            Some(parse_absolute(&text).or_else(|p| err(&at, p))?)
        }
    };

    let tables: Vec<&Node> = of_kind("partitioning").collect();
    let table_node = match tables.as_slice() {
        [one] => *one,
        [] => return err("(document)", "no partitioning entry"),
        [_, second, ..] => return err(&second.key, "only one partitioning entry is supported"),
    };
    check_keys(
        &table_node.values,
        &["name", "base", "label", "align"],
        &table_node.key,
    )?;
    if table_node.base.as_deref() != Some(image.name.as_str()) {
        return err(
            &format!("{}.base", table_node.key),
            format!("must name the local_loop {:?}", image.name),
        );
    }
    let label_key = format!("{}.label", table_node.key);
    let table = match get_string(&table_node.values, "label", &table_node.key)?.as_deref() {
        Some("gpt") => TableKind::Gpt,
        Some("mbr") => TableKind::Mbr,
        Some(other) => return err(&label_key, format!("{other:?} is not gpt or mbr")),
        None => return err(&label_key, "missing (gpt or mbr)"),
    };
    if let Some(align) = get_string(&table_node.values, "align", &table_node.key)? {
        let at = format!("{}.align", table_node.key);
        if parse_absolute(&align).or_else(|p| err(&at, p))? != 1 << 20 {
            return err(&at, "kiln aligns partitions to 1MiB only");
        }
    }
    if table_node.partitions.is_empty() {
        return err(&format!("{}.partitions", table_node.key), "no partitions");
    }
    if table == TableKind::Mbr && table_node.partitions.len() > 4 {
        return err(
            &format!("{}.partitions", table_node.key),
            "at most 4 partitions fit an MBR (kiln writes primary partitions only)",
        );
    }

    let mut partitions = Vec::new();
    for (values, key) in &table_node.partitions {
        partitions.push(partition(values, key, table, &nodes)?);
    }
    // Every mkfs must hang off a partition.
    for node in of_kind("mkfs") {
        let base = node.base.as_deref().unwrap_or_default();
        if !partitions.iter().any(|p| p.name == base) {
            return err(
                &format!("{}.base", node.key),
                format!("{base:?} is not a partition"),
            );
        }
    }
    check_filesystems(&partitions, &nodes)?;
    Ok(Layout {
        image_name: image.name.clone(),
        image_size,
        table,
        partitions,
    })
}

fn partition(
    values: &Mapping,
    key: &str,
    table: TableKind,
    nodes: &[Node],
) -> Result<PartitionLayout, LayoutError> {
    check_keys(values, &["name", "base", "type", "size", "flags"], key)?;
    let name = get_string(values, "name", key)?.unwrap_or_default();
    let size_key = format!("{key}.size");
    let size = match get_string(values, "size", key)? {
        Some(text) => parse_size_spec(&text).or_else(|p| err(&size_key, p))?,
        None => return err(&size_key, "missing"),
    };
    let type_key = format!("{key}.type");
    let partition_type = match (get_string(values, "type", key)?, table) {
        (None, t) => PartitionType::default_for(t),
        (Some(code), TableKind::Gpt) => {
            PartitionType::Gpt(parse_gpt_type(&code).or_else(|p| err(&type_key, p))?)
        }
        (Some(code), TableKind::Mbr) => {
            PartitionType::Mbr(parse_mbr_type(&code).or_else(|p| err(&type_key, p))?)
        }
    };
    let (mut boot, mut primary) = (false, false);
    if let Some(flags) = values.get("flags") {
        let flags_key = format!("{key}.flags");
        let Value::Sequence(flags) = flags else {
            return err(&flags_key, "expected a list such as [boot, primary]");
        };
        for flag in flags {
            match string_of(flag, &flags_key)?.as_str() {
                "boot" => boot = true,
                "primary" if table == TableKind::Gpt => {
                    return err(&flags_key, "the primary flag is for MBR partitions only");
                }
                "primary" => primary = true,
                other => {
                    return err(
                        &flags_key,
                        format!("unknown flag {other:?} (boot, primary)"),
                    );
                }
            }
        }
    }
    if table == TableKind::Mbr && !primary {
        return err(
            &format!("{key}.flags"),
            "MBR partitions must be primary (flags: [primary]); kiln does not write logical partitions",
        );
    }
    let mkfs: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.kind == "mkfs" && n.base.as_deref() == Some(name.as_str()))
        .collect();
    let filesystem = match mkfs.as_slice() {
        [] => None,
        [one] => Some(filesystem(one, nodes)?),
        [_, second, ..] => {
            return err(
                &second.key,
                format!("partition {name:?} already has a filesystem"),
            );
        }
    };
    if partition_type.is_bios_boot() && filesystem.is_some() {
        return err(
            key,
            "a BIOS boot partition (EF02) holds the boot loader, not a filesystem",
        );
    }
    Ok(PartitionLayout {
        name,
        key: key.to_string(),
        partition_type,
        size,
        boot,
        filesystem,
    })
}

/// Longest label each filesystem stores.
fn max_label(fs_type: FsType) -> usize {
    match fs_type {
        FsType::Ext4 => 16,
        FsType::Xfs => 12,
        FsType::Vfat => 11,
    }
}

fn filesystem(node: &Node, nodes: &[Node]) -> Result<FilesystemLayout, LayoutError> {
    let key = &node.key;
    check_keys(
        &node.values,
        &["name", "base", "type", "label", "uuid", "opts"],
        key,
    )?;
    let is_root_mkfs = node.name == "mkfs_root";
    let type_key = format!("{key}.type");
    let fs_type = match get_string(&node.values, "type", key)? {
        Some(t) => t.parse::<FsType>().or_else(|p| err(&type_key, p))?,
        // DIB fills in DIB_ROOT_FSTYPE (ext4) for mkfs_root only.
        None if is_root_mkfs => FsType::Ext4,
        None => return err(&type_key, "missing (ext4, xfs or vfat)"),
    };
    let label = match get_string(&node.values, "label", key)? {
        Some(l) => l,
        None if is_root_mkfs && fs_type == FsType::Xfs => "img-rootfs".into(),
        None if is_root_mkfs => "cloudimg-rootfs".into(),
        None => node.name.clone(),
    };
    let label = if fs_type == FsType::Vfat {
        label.to_uppercase()
    } else {
        label
    };
    let label_key = format!("{key}.label");
    if label.is_empty() {
        return err(&label_key, "empty");
    }
    if label.len() > max_label(fs_type) {
        return err(
            &label_key,
            format!(
                "{label:?} is {} bytes, {fs_type} labels hold at most {}",
                label.len(),
                max_label(fs_type)
            ),
        );
    }
    let uuid = match get_string(&node.values, "uuid", key)? {
        None => None,
        Some(text) => {
            let at = format!("{key}.uuid");
            let parsed = uuid::Uuid::parse_str(text.trim())
                .or_else(|e| err(&at, format!("{text:?}: {e}")))?;
            if fs_type == FsType::Vfat {
                return err(
                    &at,
                    "vfat has a 32-bit volume id, not a UUID; leave uuid out",
                );
            }
            Some(parsed)
        }
    };
    let opts = get_string(&node.values, "opts", key)?
        .map(|o| o.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();

    let mounts: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.kind == "mount" && n.base.as_deref() == Some(node.name.as_str()))
        .collect();
    let mount = match mounts.as_slice() {
        [] => None,
        [one] => Some(mount(one, nodes)?),
        [_, second, ..] => {
            return err(
                &second.key,
                format!("filesystem {:?} is already mounted", node.name),
            );
        }
    };
    Ok(FilesystemLayout {
        name: node.name.clone(),
        fs_type,
        label,
        uuid,
        opts,
        mount,
    })
}

/// `/boot/efi/` and `//boot/efi` become `/boot/efi`; `.` and `..` are refused.
fn normalise_mount_point(text: &str, key: &str) -> Result<String, LayoutError> {
    if !text.starts_with('/') {
        return err(key, format!("{text:?} is not an absolute path"));
    }
    let mut parts = Vec::new();
    for part in text.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return err(key, format!("{text:?} contains {part:?}"));
        }
        parts.push(part);
    }
    Ok(format!("/{}", parts.join("/")))
}

fn mount(node: &Node, nodes: &[Node]) -> Result<MountLayout, LayoutError> {
    let key = &node.key;
    check_keys(&node.values, &["name", "base", "mount_point"], key)?;
    let mp_key = format!("{key}.mount_point");
    let mount_point = match get_string(&node.values, "mount_point", key)? {
        Some(mp) => normalise_mount_point(&mp, &mp_key)?,
        None => return err(&mp_key, "missing"),
    };
    let fstabs: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.kind == "fstab" && n.base.as_deref() == Some(node.name.as_str()))
        .collect();
    let fstab = match fstabs.as_slice() {
        [] => None,
        [one] => {
            check_keys(
                &one.values,
                &["name", "base", "options", "dump-freq", "fsck-passno"],
                &one.key,
            )?;
            Some(FstabLayout {
                options: get_string(&one.values, "options", &one.key)?
                    .unwrap_or_else(|| "defaults".into()),
                dump_freq: get_u32(&one.values, "dump-freq", &one.key, 0)?,
                fsck_passno: get_u32(&one.values, "fsck-passno", &one.key, 2)?,
            })
        }
        [_, second, ..] => return err(&second.key, "mount already has an fstab entry"),
    };
    Ok(MountLayout { mount_point, fstab })
}

/// Cross-entry rules: references resolve, one root, unique mount points and labels.
fn check_filesystems(partitions: &[PartitionLayout], nodes: &[Node]) -> Result<(), LayoutError> {
    for node in nodes {
        let parent_kind = match node.kind {
            "mount" => "mkfs",
            "fstab" => "mount",
            _ => continue,
        };
        let base = node.base.as_deref().unwrap_or_default();
        if !nodes
            .iter()
            .any(|n| n.kind == parent_kind && n.name == base)
        {
            return err(
                &format!("{}.base", node.key),
                format!("{base:?} is not a {parent_kind} entry"),
            );
        }
    }
    let key_of = |fs_name: &str, kind: &str| {
        nodes
            .iter()
            .find(|n| n.kind == kind && (n.name == fs_name || n.base.as_deref() == Some(fs_name)))
            .map(|n| n.key.clone())
            .unwrap_or_default()
    };
    let filesystems: Vec<&FilesystemLayout> = partitions
        .iter()
        .filter_map(|p| p.filesystem.as_ref())
        .collect();
    for (i, fs) in filesystems.iter().enumerate() {
        for earlier in &filesystems[..i] {
            if fs.label == earlier.label {
                return err(
                    &format!("{}.label", key_of(&fs.name, "mkfs")),
                    format!("label {:?} is also used by {}", fs.label, earlier.name),
                );
            }
            if let (Some(a), Some(b)) = (&fs.mount, &earlier.mount)
                && a.mount_point == b.mount_point
            {
                let what = if a.mount_point == "/" {
                    "two root filesystems: ".to_string()
                } else {
                    String::new()
                };
                return err(
                    &format!("{}.mount_point", key_of(&fs.name, "mount")),
                    format!(
                        "{what}mount point {} is also used by {}",
                        a.mount_point, earlier.name
                    ),
                );
            }
        }
    }
    if !filesystems
        .iter()
        .any(|f| f.mount.as_ref().is_some_and(|m| m.mount_point == "/"))
    {
        return err("(document)", "no filesystem is mounted at /");
    }
    Ok(())
}
