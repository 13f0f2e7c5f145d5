//! The contents of an OpenStack config drive (what Nova and Ironic write, and what
//! cloud-init's ConfigDrive data source and kiln's role config read): a file tree
//! under `openstack/<version>/`. Pure: this module only makes the bytes of each
//! file; `agent::configdrive` puts them in a FAT filesystem on the disk.
//!
//! Every file is written for the version `2012-08-10` (the oldest, which every
//! reader knows) and for `latest`; kiln's role configuration only goes to `latest`.
//! JSON is compact with keys in a fixed order, so the same content always gives the
//! same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metadata versions written, oldest first.
pub const VERSIONS: &[&str] = &["2012-08-10", "latest"];

/// Name of the file holding kiln's role configuration (read by `kiln config`).
pub const KILN_CONFIG_FILE: &str = "kiln_config.json";

/// Everything a config drive holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDriveContent {
    pub meta_data: MetaData,
    /// Passed to the instance unchanged (cloud-config, a script, ...).
    #[serde(default)]
    pub user_data: Option<Vec<u8>>,
    pub network_data: NetworkData,
    /// vendor_data.json; `{}` when there is none.
    #[serde(default = "empty_object")]
    pub vendor_data: serde_json::Value,
    /// The role's configuration (plan `config:` merged with per-node overrides).
    #[serde(default = "empty_object")]
    pub kiln_config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// meta_data.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaData {
    /// The node's UUID (cloud-init's instance id).
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    /// Key name -> OpenSSH public key line.
    #[serde(default)]
    pub public_keys: BTreeMap<String, String>,
    #[serde(default)]
    pub launch_index: u32,
    #[serde(default = "default_zone")]
    pub availability_zone: String,
    /// Free-form string metadata: `role`, `index`, ...
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

fn default_zone() -> String {
    "nova".into()
}

/// network_data.json in Nova's shape: physical links, the networks on them, and
/// services such as DNS servers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkData {
    pub links: Vec<Link>,
    pub networks: Vec<Network>,
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub id: String,
    /// "phy" for a NIC.
    #[serde(rename = "type")]
    pub kind: String,
    pub ethernet_mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    /// "ipv4_dhcp", "ipv6_dhcp", "ipv4" (static), "ipv6".
    #[serde(rename = "type")]
    pub kind: String,
    /// The `id` of a [`Link`].
    pub link: String,
    pub network_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub network: String,
    pub netmask: String,
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// "dns".
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("config drive meta_data.{field} is empty")]
    EmptyField { field: &'static str },
    #[error("config drive network_data: port {index} MAC address {mac:?} is not six hex octets")]
    BadMac { index: usize, mac: String },
    #[error(
        "config drive network_data: network {network:?} uses link {link:?}, which is not defined"
    )]
    UnknownLink { network: String, link: String },
    #[error("config drive: serializing {file}: {problem}")]
    Json { file: String, problem: String },
}

impl NetworkData {
    /// DHCP (IPv4) on every port, in the order given: link `port<i>` with the
    /// MAC, network `network<i>` on it.
    pub fn dhcp(macs: &[&str]) -> Result<NetworkData, ContentError> {
        let mut data = NetworkData::default();
        for (index, mac) in macs.iter().enumerate() {
            let mac = normalize_mac(mac).ok_or_else(|| ContentError::BadMac {
                index,
                mac: mac.to_string(),
            })?;
            let link = format!("port{index}");
            data.networks.push(Network {
                id: format!("network{index}"),
                kind: "ipv4_dhcp".into(),
                link: link.clone(),
                network_id: format!("network{index}"),
                ip_address: None,
                netmask: None,
                routes: Vec::new(),
                services: Vec::new(),
            });
            data.links.push(Link {
                id: link,
                kind: "phy".into(),
                ethernet_mac_address: mac,
                mtu: None,
            });
        }
        Ok(data)
    }

    fn validate(&self) -> Result<(), ContentError> {
        for (index, link) in self.links.iter().enumerate() {
            if normalize_mac(&link.ethernet_mac_address).is_none() {
                return Err(ContentError::BadMac {
                    index,
                    mac: link.ethernet_mac_address.clone(),
                });
            }
        }
        for n in &self.networks {
            if !self.links.iter().any(|l| l.id == n.link) {
                return Err(ContentError::UnknownLink {
                    network: n.id.clone(),
                    link: n.link.clone(),
                });
            }
        }
        Ok(())
    }
}

/// "52:54:00:AB:CD:EF" or "52-54-00-ab-cd-ef" as lower-case, colon-separated.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let octets: Vec<&str> = mac.trim().split([':', '-']).collect();
    let ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| octets.join(":").to_ascii_lowercase())
}

impl ConfigDriveContent {
    /// Every file of the drive: path relative to the filesystem root -> bytes,
    /// sorted by path.
    pub fn files(&self) -> Result<BTreeMap<String, Vec<u8>>, ContentError> {
        let m = &self.meta_data;
        for (field, value) in [("uuid", &m.uuid), ("hostname", &m.hostname)] {
            if value.trim().is_empty() {
                return Err(ContentError::EmptyField { field });
            }
        }
        self.network_data.validate()?;
        let json = |file: &str, value: &dyn erased::Json| {
            value.to_json().map_err(|e| ContentError::Json {
                file: file.to_string(),
                problem: e.to_string(),
            })
        };
        let meta = json("meta_data.json", &self.meta_data)?;
        let network = json("network_data.json", &self.network_data)?;
        let vendor = json("vendor_data.json", &self.vendor_data)?;
        let mut files = BTreeMap::new();
        for version in VERSIONS {
            let dir = format!("openstack/{version}");
            files.insert(format!("{dir}/meta_data.json"), meta.clone());
            files.insert(format!("{dir}/network_data.json"), network.clone());
            files.insert(format!("{dir}/vendor_data.json"), vendor.clone());
            if let Some(user_data) = &self.user_data {
                files.insert(format!("{dir}/user_data"), user_data.clone());
            }
        }
        files.insert(
            format!("openstack/latest/{KILN_CONFIG_FILE}"),
            json(KILN_CONFIG_FILE, &self.kiln_config)?,
        );
        Ok(files)
    }
}

/// Serialize values of different types through one closure.
mod erased {
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> ConfigDriveContent {
        ConfigDriveContent {
            meta_data: MetaData {
                uuid: "0b7a1a2e-5f4c-4f8e-9d51-3c2b1a0f9e8d".into(),
                name: "node-0".into(),
                hostname: "overcloud-controller-0".into(),
                public_keys: BTreeMap::from([("default".into(), "ssh-ed25519 AAAA k".into())]),
                launch_index: 0,
                availability_zone: "nova".into(),
                meta: BTreeMap::from([("role".into(), "Controller".into())]),
            },
            user_data: Some(b"#cloud-config\n".to_vec()),
            network_data: NetworkData::dhcp(&["52:54:00:AB:CD:01"]).unwrap(),
            vendor_data: empty_object(),
            kiln_config: serde_json::json!({"ntp": {"servers": ["10.0.0.1"]}}),
        }
    }

    #[test]
    fn tree_has_both_versions_and_config_only_in_latest() {
        let files = content().files().unwrap();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "openstack/2012-08-10/meta_data.json",
                "openstack/2012-08-10/network_data.json",
                "openstack/2012-08-10/user_data",
                "openstack/2012-08-10/vendor_data.json",
                "openstack/latest/kiln_config.json",
                "openstack/latest/meta_data.json",
                "openstack/latest/network_data.json",
                "openstack/latest/user_data",
                "openstack/latest/vendor_data.json",
            ]
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&files["openstack/latest/meta_data.json"]).unwrap();
        assert_eq!(meta["hostname"], "overcloud-controller-0");
        assert_eq!(meta["public_keys"]["default"], "ssh-ed25519 AAAA k");
        assert_eq!(meta["meta"]["role"], "Controller");
        let net: serde_json::Value =
            serde_json::from_slice(&files["openstack/latest/network_data.json"]).unwrap();
        assert_eq!(net["links"][0]["ethernet_mac_address"], "52:54:00:ab:cd:01");
        assert_eq!(net["networks"][0]["type"], "ipv4_dhcp");
        assert_eq!(net["networks"][0]["link"], net["links"][0]["id"]);
        assert_eq!(files["openstack/latest/vendor_data.json"], b"{}");
    }

    #[test]
    fn bad_content_is_named() {
        let mut c = content();
        c.meta_data.hostname = " ".into();
        assert_eq!(
            c.files().unwrap_err(),
            ContentError::EmptyField { field: "hostname" }
        );
        let e = NetworkData::dhcp(&["52:54:00:ab:cd", "x"]).unwrap_err();
        assert_eq!(
            e,
            ContentError::BadMac {
                index: 0,
                mac: "52:54:00:ab:cd".into()
            }
        );
        let mut c = content();
        c.network_data.networks[0].link = "nowhere".into();
        assert!(matches!(c.files(), Err(ContentError::UnknownLink { .. })));
    }
}
