//! Recipes: what to build, in the keys of diskimage-builder's YAML front end
//! (`diskimage-builder recipe.yaml`) plus kiln's `block-device`, `kernel-cmdline`
//! and a unit-aware `image-size`; and the same [`Recipe`] from
//! `disk-image-create` arguments.
//!
//! A file holds one mapping or a list of them. As in DIB, list entries with the
//! same `imagename` (an entry without one continues the previous image, the first
//! defaults to `image`) are merged: lists appended, maps updated, other values
//! replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{}: image '{image}': {source}", .path.display())]
    Entry {
        path: PathBuf,
        image: String,
        source: serde_yaml_ng::Error,
    },
    #[error("{}: {what}", .path.display())]
    Shape { path: PathBuf, what: String },
    #[error("{}: '{key}': {what}", .path.display())]
    Value {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("disk-image-create arguments: {0}")]
    Args(String),
}

/// Output types DIB accepts (`types:` / `-t`); which of them kiln writes is the
/// build's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Qcow2,
    Tar,
    Tgz,
    Squashfs,
    Vhd,
    Docker,
    Aci,
    Raw,
}

impl ImageType {
    pub fn parse(name: &str) -> Option<ImageType> {
        serde_yaml_ng::from_value(Value::String(name.to_string())).ok()
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageType::Qcow2 => "qcow2",
            ImageType::Tar => "tar",
            ImageType::Tgz => "tgz",
            ImageType::Squashfs => "squash",
            ImageType::Vhd => "vhd",
            ImageType::Docker => "docker",
            ImageType::Aci => "aci",
            ImageType::Raw => "raw",
        }
    }
}

const ARCHES: [&str; 10] = [
    "aarch64", "amd64", "arm64", "armhf", "powerpc", "ppc64", "ppc64el", "ppc64le", "s390x",
    "x86_64",
];

/// One image to build.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// `imagename` / `-o`; default `image`.
    pub imagename: String,
    /// `arch` / `-a` (also accepted as `architecture`).
    pub arch: Option<String>,
    /// `types` / `-t`; default qcow2.
    pub types: Vec<ImageType>,
    /// Extra environment for every script.
    pub environment: BTreeMap<String, String>,
    /// Build a kernel + initramfs instead of a disk image.
    pub ramdisk: bool,
    /// `debug-trace` / `-x` count (0..=2).
    pub debug_trace: u8,
    pub uncompressed: bool,
    pub clear: bool,
    pub logfile: Option<PathBuf>,
    pub checksum: bool,
    /// Image size in bytes (`image-size`: a number is GiB as in DIB, or a string
    /// with a unit: `512MiB`, `4G`, `10GB`).
    pub image_size: Option<u64>,
    /// `image-extra-size` in GiB.
    pub image_extra_size: Option<u64>,
    pub image_cache: Option<PathBuf>,
    pub max_online_resize: Option<u64>,
    pub min_tmpfs: Option<u64>,
    pub mkfs_journal_size: Option<u64>,
    pub mkfs_options: Option<String>,
    pub no_tmpfs: bool,
    pub offline: bool,
    pub qemu_img_options: BTreeMap<String, String>,
    pub root_label: Option<String>,
    pub ramdisk_element: Option<String>,
    /// `install-type`: `source` or `package`.
    pub install_type: Option<String>,
    pub docker_target: Option<String>,
    /// `packages` / `-p`: installed in install.d.
    pub packages: Vec<String>,
    /// `skip-base` / `-n`.
    pub skip_base: bool,
    pub elements: Vec<String>,
    /// kiln: an inline DIB block-device layout, parsed by the disk module.
    pub block_device: Option<Value>,
    /// kiln: kernel command line for the boot loader.
    pub kernel_cmdline: Option<String>,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            imagename: "image".into(),
            arch: None,
            types: vec![ImageType::Qcow2],
            environment: BTreeMap::new(),
            ramdisk: false,
            debug_trace: 0,
            uncompressed: false,
            clear: false,
            logfile: None,
            checksum: false,
            image_size: None,
            image_extra_size: None,
            image_cache: None,
            max_online_resize: None,
            min_tmpfs: None,
            mkfs_journal_size: None,
            mkfs_options: None,
            no_tmpfs: false,
            offline: false,
            qemu_img_options: BTreeMap::new(),
            root_label: None,
            ramdisk_element: None,
            install_type: None,
            docker_target: None,
            packages: Vec::new(),
            skip_base: false,
            elements: Vec::new(),
            block_device: None,
            kernel_cmdline: None,
        }
    }
}

/// The YAML form of one entry; unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Entry {
    imagename: Option<String>,
    #[serde(alias = "architecture")]
    arch: Option<String>,
    types: Option<Vec<ImageType>>,
    environment: Option<BTreeMap<String, Scalar>>,
    ramdisk: Option<bool>,
    debug_trace: Option<u8>,
    uncompressed: Option<bool>,
    clear: Option<bool>,
    logfile: Option<PathBuf>,
    checksum: Option<bool>,
    image_size: Option<Scalar>,
    image_extra_size: Option<u64>,
    image_cache: Option<PathBuf>,
    max_online_resize: Option<u64>,
    min_tmpfs: Option<u64>,
    mkfs_journal_size: Option<u64>,
    mkfs_options: Option<String>,
    no_tmpfs: Option<bool>,
    offline: Option<bool>,
    qemu_img_options: Option<BTreeMap<String, Scalar>>,
    root_label: Option<String>,
    ramdisk_element: Option<String>,
    install_type: Option<String>,
    docker_target: Option<String>,
    packages: Option<Vec<String>>,
    skip_base: Option<bool>,
    elements: Option<Vec<String>>,
    block_device: Option<Value>,
    kernel_cmdline: Option<String>,
}

/// A string, or a number written without quotes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    String(String),
    Int(i64),
    Float(f64),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::String(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

/// Parse a size: a bare number is GiB (DIB's `--image-size`); units K/M/G/T and
/// KiB..TiB are binary, KB..TB decimal.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (text[..split].trim(), text[split..].trim());
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit {
        "" => 1024f64.powi(3),
        "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024f64.powi(2),
        "G" | "GiB" => 1024f64.powi(3),
        "T" | "TiB" => 1024f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// Read a recipe file.
pub fn load(path: &Path) -> Result<Vec<Recipe>, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parse recipe text; `path` names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Recipe>, RecipeError> {
    let shape = |what: &str| RecipeError::Shape {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let value: Value = serde_yaml_ng::from_str(text).map_err(|source| RecipeError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let entries: Vec<Mapping> = match value {
        Value::Mapping(m) => vec![m],
        Value::Sequence(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Mapping(m) => Ok(m),
                _ => Err(shape("every list item must be a mapping of recipe keys")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(shape("expected a mapping of recipe keys or a list of them")),
    };
    if entries.is_empty() {
        return Err(shape("no image definitions"));
    }

    // Merge entries per image name, keeping first-seen order.
    let mut merged: Vec<(String, Mapping)> = Vec::new();
    let mut previous = "image".to_string();
    for entry in entries {
        let name = match entry.get("imagename") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(RecipeError::Value {
                    path: path.to_path_buf(),
                    key: "imagename".into(),
                    what: "must be a string".into(),
                });
            }
            None => previous.clone(),
        };
        previous = name.clone();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, into)) => merge_entry(into, entry),
            None => merged.push((name, entry)),
        }
    }
    merged
        .into_iter()
        .map(|(name, mapping)| to_recipe(path, &name, mapping))
        .collect()
}

fn merge_entry(into: &mut Mapping, entry: Mapping) {
    for (key, value) in entry {
        match (into.get_mut(&key), value) {
            (Some(Value::Sequence(list)), Value::Sequence(more)) => list.extend(more),
            (Some(Value::Mapping(map)), Value::Mapping(more)) => {
                for (k, v) in more {
                    map.insert(k, v);
                }
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn to_recipe(path: &Path, name: &str, mapping: Mapping) -> Result<Recipe, RecipeError> {
    let entry: Entry = serde_yaml_ng::from_value(Value::Mapping(mapping)).map_err(|source| {
        RecipeError::Entry {
            path: path.to_path_buf(),
            image: name.to_string(),
            source,
        }
    })?;
    let bad = |key: &str, what: String| RecipeError::Value {
        path: path.to_path_buf(),
        key: key.to_string(),
        what,
    };
    if let Some(arch) = &entry.arch
        && !ARCHES.contains(&arch.as_str())
    {
        return Err(bad(
            "arch",
            format!("'{arch}' is not one of {}", ARCHES.join(", ")),
        ));
    }
    if let Some(level) = entry.debug_trace
        && level > 2
    {
        return Err(bad("debug-trace", format!("{level} is above 2")));
    }
    if let Some(kind) = &entry.install_type
        && kind != "source"
        && kind != "package"
    {
        return Err(bad(
            "install-type",
            format!("'{kind}' is neither source nor package"),
        ));
    }
    for (key, value) in [
        ("image-extra-size", entry.image_extra_size),
        ("max-online-resize", entry.max_online_resize),
        ("min-tmpfs", entry.min_tmpfs),
        ("mkfs-journal-size", entry.mkfs_journal_size),
    ] {
        if value == Some(0) {
            return Err(bad(key, "must be at least 1".into()));
        }
    }
    let image_size = match entry.image_size {
        None => None,
        Some(size) => {
            let text = size.text();
            Some(parse_size(&text).ok_or_else(|| {
                bad(
                    "image-size",
                    format!("'{text}' is not a size (GiB, or a number with K/M/G/T, KiB.., KB..)"),
                )
            })?)
        }
    };
    let to_strings = |map: Option<BTreeMap<String, Scalar>>| -> BTreeMap<String, String> {
        map.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.text()))
            .collect()
    };
    let defaults = Recipe::default();
    Ok(Recipe {
        imagename: entry.imagename.unwrap_or_else(|| name.to_string()),
        arch: entry.arch,
        types: entry.types.unwrap_or(defaults.types),
        environment: to_strings(entry.environment),
        ramdisk: entry.ramdisk.unwrap_or(false),
        debug_trace: entry.debug_trace.unwrap_or(0),
        uncompressed: entry.uncompressed.unwrap_or(false),
        clear: entry.clear.unwrap_or(false),
        logfile: entry.logfile,
        checksum: entry.checksum.unwrap_or(false),
        image_size,
        image_extra_size: entry.image_extra_size,
        image_cache: entry.image_cache,
        max_online_resize: entry.max_online_resize,
        min_tmpfs: entry.min_tmpfs,
        mkfs_journal_size: entry.mkfs_journal_size,
        mkfs_options: entry.mkfs_options,
        no_tmpfs: entry.no_tmpfs.unwrap_or(false),
        offline: entry.offline.unwrap_or(false),
        qemu_img_options: to_strings(entry.qemu_img_options),
        root_label: entry.root_label,
        ramdisk_element: entry.ramdisk_element,
        install_type: entry.install_type,
        docker_target: entry.docker_target,
        packages: entry.packages.unwrap_or_default(),
        skip_base: entry.skip_base.unwrap_or(false),
        elements: entry.elements.unwrap_or_default(),
        block_device: entry.block_device,
        kernel_cmdline: entry.kernel_cmdline,
    })
}

impl Recipe {
    /// The recipe `disk-image-create ARGS...` describes (same flags as DIB's).
    pub fn from_disk_image_create_args(args: &[String]) -> Result<Recipe, RecipeError> {
        let args = split_short_groups(args);
        let mut recipe = Recipe::default();
        let mut types_given = false;
        let mut i = 0;
        let mut only_elements = false;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            if only_elements || !arg.starts_with('-') || arg == "-" {
                recipe.elements.push(arg.clone());
                continue;
            }
            if arg == "--" {
                only_elements = true;
                continue;
            }
            // --key=value, --key value, -kVALUE or -k VALUE
            let (flag, inline): (String, Option<String>) =
                if let Some(long) = arg.strip_prefix("--") {
                    match long.split_once('=') {
                        Some((k, v)) => (format!("--{k}"), Some(v.to_string())),
                        None => (arg.clone(), None),
                    }
                } else {
                    (arg.clone(), None)
                };
            let takes_value = matches!(
                flag.as_str(),
                "-a" | "-o"
                    | "-t"
                    | "-p"
                    | "--image-size"
                    | "--image-extra-size"
                    | "--image-cache"
                    | "--max-online-resize"
                    | "--mkfs-journal-size"
                    | "--mkfs-options"
                    | "--min-tmpfs"
                    | "--qemu-img-options"
                    | "--root-label"
                    | "--ramdisk-element"
                    | "--install-type"
                    | "--docker-target"
                    | "--logfile"
            );
            let value = if takes_value {
                match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| RecipeError::Args(format!("{flag} needs a value")))?;
                        i += 1;
                        v
                    }
                }
            } else {
                if inline.is_some() {
                    return Err(RecipeError::Args(format!("{flag} takes no value")));
                }
                String::new()
            };
            let number = |v: &str| {
                v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    RecipeError::Args(format!("{flag}: '{v}' is not a positive integer"))
                })
            };
            match flag.as_str() {
                "-a" => recipe.arch = Some(value),
                "-o" => recipe.imagename = value,
                "-t" => {
                    recipe.types = value
                        .split(',')
                        .map(|t| {
                            ImageType::parse(t).ok_or_else(|| {
                                RecipeError::Args(format!("-t: unknown image type '{t}'"))
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    types_given = true;
                }
                "-p" => recipe
                    .packages
                    .extend(value.split(',').filter(|p| !p.is_empty()).map(String::from)),
                "-x" => recipe.debug_trace = recipe.debug_trace.saturating_add(1).min(2),
                "-u" => recipe.uncompressed = true,
                "-c" => recipe.clear = true,
                "-n" => recipe.skip_base = true,
                "--checksum" => recipe.checksum = true,
                "--no-tmpfs" => recipe.no_tmpfs = true,
                "--offline" => recipe.offline = true,
                "--image-size" => {
                    recipe.image_size = Some(parse_size(&value).ok_or_else(|| {
                        RecipeError::Args(format!("--image-size: '{value}' is not a size"))
                    })?)
                }
                "--image-extra-size" => recipe.image_extra_size = Some(number(&value)?),
                "--image-cache" => recipe.image_cache = Some(PathBuf::from(value)),
                "--max-online-resize" => recipe.max_online_resize = Some(number(&value)?),
                "--mkfs-journal-size" => recipe.mkfs_journal_size = Some(number(&value)?),
                "--min-tmpfs" => recipe.min_tmpfs = Some(number(&value)?),
                "--mkfs-options" => recipe.mkfs_options = Some(value),
                "--qemu-img-options" => {
                    for pair in value.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').ok_or_else(|| {
                            RecipeError::Args(format!(
                                "--qemu-img-options: '{pair}' is not key=value"
                            ))
                        })?;
                        recipe.qemu_img_options.insert(k.to_string(), v.to_string());
                    }
                }
                "--root-label" => recipe.root_label = Some(value),
                "--ramdisk-element" => recipe.ramdisk_element = Some(value),
                "--install-type" => recipe.install_type = Some(value),
                "--docker-target" => recipe.docker_target = Some(value),
                "--logfile" => recipe.logfile = Some(PathBuf::from(value)),
                other => return Err(RecipeError::Args(format!("unknown option {other}"))),
            }
        }
        if recipe.elements.is_empty() {
            return Err(RecipeError::Args(
                "at least one element must be given".into(),
            ));
        }
        // DIB drops a matching extension when one type is built: -o x.qcow2 -t qcow2.
        if types_given && let [only] = recipe.types.as_slice() {
            let suffix = format!(".{}", only.extension());
            if let Some(stripped) = recipe.imagename.strip_suffix(&suffix) {
                recipe.imagename = stripped.to_string();
            }
        }
        Ok(recipe)
    }

    /// The architecture DIB would use: the recipe's, else the host's in Debian
    /// naming.
    pub fn effective_arch(&self) -> String {
        self.arch.clone().unwrap_or_else(|| {
            match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            }
            .to_string()
        })
    }

    /// Variables disk-image-create exports from its flags, then the recipe's
    /// `environment` (which wins).
    pub fn dib_environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("ARCH".into(), self.effective_arch());
        env.insert("IMAGE_NAME".into(), self.imagename.clone());
        env.insert("DIB_DEBUG_TRACE".into(), self.debug_trace.to_string());
        env.insert(
            "DIB_DEFAULT_INSTALLTYPE".into(),
            self.install_type.clone().unwrap_or_else(|| "source".into()),
        );
        if self.checksum {
            env.insert("DIB_CHECKSUM".into(), "1".into());
        }
        if self.no_tmpfs {
            env.insert("DIB_NO_TMPFS".into(), "1".into());
        }
        if self.offline {
            env.insert("DIB_OFFLINE".into(), "1".into());
        }
        if let Some(bytes) = self.image_size {
            // DIB_IMAGE_SIZE is in GiB.
            env.insert(
                "DIB_IMAGE_SIZE".into(),
                format!("{}", bytes as f64 / 1024f64.powi(3)),
            );
        }
        if let Some(gib) = self.image_extra_size {
            env.insert("DIB_IMAGE_EXTRA_SIZE".into(), gib.to_string());
        }
        if let Some(dir) = &self.image_cache {
            env.insert("DIB_IMAGE_CACHE".into(), dir.display().to_string());
        }
        if let Some(mb) = self.mkfs_journal_size {
            env.insert("DIB_JOURNAL_SIZE".into(), mb.to_string());
        }
        if let Some(gib) = self.min_tmpfs {
            env.insert("DIB_MIN_TMPFS".into(), gib.to_string());
        }
        if let Some(label) = &self.root_label {
            env.insert("DIB_ROOT_LABEL".into(), label.clone());
        }
        env.extend(self.environment.clone());
        env
    }
}

/// Split getopt-style short option groups: `-xun` -> `-x -u -n`, `-xoNAME` ->
/// `-x -o NAME`.
fn split_short_groups(args: &[String]) -> Vec<String> {
    const FLAGS: &str = "xucn";
    const WITH_VALUE: &str = "aotp";
    let mut out = Vec::new();
    let mut rest_are_elements = false;
    for arg in args {
        let group = arg
            .strip_prefix('-')
            .filter(|g| !rest_are_elements && g.len() > 1 && !g.starts_with('-'));
        let Some(group) = group else {
            rest_are_elements |= arg == "--";
            out.push(arg.clone());
            continue;
        };
        for (at, c) in group.char_indices() {
            out.push(format!("-{c}"));
            if WITH_VALUE.contains(c) {
                let value = &group[at + c.len_utf8()..];
                if !value.is_empty() {
                    out.push(value.to_string());
                }
                break;
            }
            if !FLAGS.contains(c) {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Recipe>, RecipeError> {
        parse(Path::new("recipes/test.yaml"), text)
    }

    #[test]
    fn every_dib_key_parses() {
        let r = parse_str(
            "
imagename: overcloud
arch: amd64
types: [qcow2, raw, tar]
environment: {DIB_RELEASE: bookworm, DIB_DEV_USER_PWDLESS_SUDO: 1}
ramdisk: false
debug-trace: 2
uncompressed: true
clear: false
logfile: /tmp/build.log
checksum: true
image-size: 4
image-extra-size: 1
image-cache: /var/cache/kiln
max-online-resize: 274877906944
min-tmpfs: 2
mkfs-journal-size: 32
mkfs-options: -O ^has_journal
no-tmpfs: true
offline: true
qemu-img-options: {compat: '1.1'}
root-label: cloudimg-rootfs
ramdisk-element: ramdisk
install-type: package
docker-target: repo:tag
packages: [vim, curl]
skip-base: true
elements: [debian-minimal, vm]
block-device:
  - local_loop: {name: image0}
kernel-cmdline: console=ttyS0
",
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.imagename, "overcloud");
        assert_eq!(r.types, [ImageType::Qcow2, ImageType::Raw, ImageType::Tar]);
        assert_eq!(r.environment["DIB_DEV_USER_PWDLESS_SUDO"], "1");
        assert_eq!(r.image_size, Some(4 << 30));
        assert_eq!(r.qemu_img_options["compat"], "1.1");
        assert!(r.skip_base && r.checksum && r.no_tmpfs && r.uncompressed);
        assert_eq!(r.debug_trace, 2);
        assert_eq!(r.elements, ["debian-minimal", "vm"]);
        assert!(r.block_device.as_ref().unwrap().is_sequence());
        assert_eq!(r.kernel_cmdline.as_deref(), Some("console=ttyS0"));
        let env = r.dib_environment();
        assert_eq!(env["DIB_DEFAULT_INSTALLTYPE"], "package");
        assert_eq!(env["DIB_IMAGE_SIZE"], "4");
        assert_eq!(env["DIB_RELEASE"], "bookworm");
    }

    #[test]
    fn list_form_merges_entries_of_one_image_like_dib() {
        let r = parse_str(
            "
- elements: [base-os]
  environment: {A: '1'}
- elements: [extra]
  environment: {B: '2'}
  types: [raw]
- imagename: second
  elements: [other]
- elements: [more-for-second]
  checksum: true
",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].imagename, "image");
        assert_eq!(r[0].elements, ["base-os", "extra"]);
        assert_eq!(r[0].environment.len(), 2);
        assert_eq!(r[0].types, [ImageType::Raw]);
        assert_eq!(r[1].imagename, "second");
        assert_eq!(r[1].elements, ["other", "more-for-second"]);
        assert!(r[1].checksum && !r[0].checksum);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_file() {
        for (text, needles) in [
            (
                "elements: [a]\nelemnts: [b]\n",
                &["recipes/test.yaml", "elemnts"][..],
            ),
            (
                "- imagename: x\n  bogus: 1\n",
                &["recipes/test.yaml", "image 'x'", "bogus"],
            ),
            ("types: [qcow3]\n", &["qcow3"]),
            ("arch: i386\n", &["'arch'", "i386"]),
            ("image-size: 4 parsecs\n", &["'image-size'"]),
            ("debug-trace: 3\n", &["'debug-trace'"]),
            ("install-type: binary\n", &["'install-type'"]),
            ("[1, 2]\n", &["list item"]),
        ] {
            let err = parse_str(text).unwrap_err().to_string();
            for needle in needles {
                assert!(err.contains(needle), "{text:?}: {err}");
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2"), Some(2 << 30));
        assert_eq!(parse_size("1.5"), Some(3 << 29));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("1 XB"), None);
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn disk_image_create_arguments() {
        let r = Recipe::from_disk_image_create_args(&args(&[
            "-o",
            "out.qcow2",
            "-t",
            "qcow2",
            "-p",
            "vim,curl",
            "-p",
            "git",
            "-x",
            "-n",
            "-a",
            "arm64",
            "--image-size",
            "3",
            "--checksum",
            "--qemu-img-options=compat=1.1,lazy_refcounts=on",
            "debian-minimal",
            "vm",
        ]))
        .unwrap();
        assert_eq!(r.imagename, "out");
        assert_eq!(r.types, [ImageType::Qcow2]);
        assert_eq!(r.packages, ["vim", "curl", "git"]);
        assert_eq!(r.debug_trace, 1);
        assert!(r.skip_base && r.checksum);
        assert_eq!(r.arch.as_deref(), Some("arm64"));
        assert_eq!(r.image_size, Some(3 << 30));
        assert_eq!(r.qemu_img_options.len(), 2);
        assert_eq!(r.elements, ["debian-minimal", "vm"]);

        let two =
            Recipe::from_disk_image_create_args(&args(&["-oname.raw", "-t", "raw,tar", "os"]))
                .unwrap();
        assert_eq!(two.imagename, "name.raw");
        for (bad, needle) in [
            (&["-t", "qcow2"][..], "at least one element"),
            (&["-o"], "-o needs a value"),
            (&["--bogus", "os"], "unknown option --bogus"),
            (&["-t", "iso", "os"], "unknown image type 'iso'"),
        ] {
            let err = Recipe::from_disk_image_create_args(&args(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
