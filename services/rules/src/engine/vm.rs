//! An action's `vm:`: checked against its `environment` and compiled at load, rendered into the
//! job's VM request for each event.

use taskbot::messages::{Environment, ImageQuery, RemoteFile, VmRequest};

use super::condition::Problem;
use super::path::Scope;
use super::template::Template;
use crate::rules_file::VmSpec;

/// The keys of `vm.image`.
const IMAGE_KEYS: [&str; 4] = ["name", "distro", "release", "flavour"];

/// An action's `vm:`, compiled: the templates of what the job's VM request gets.
#[derive(Debug, Clone)]
pub struct VmTemplates {
    /// (`name`/`distro`/`release`/`flavour`, template).
    image: Vec<(String, Template)>,
    blank_disk_mb: Option<u64>,
    /// URL and SHA-256.
    iso: Option<(Template, Template)>,
    kernel_from_item: bool,
}

impl VmTemplates {
    /// Check an action's `vm:` against its `environment` and parse its templates with
    /// `template(text, key)`.
    pub fn compile(
        vm: &VmSpec,
        environment: Environment,
        template: impl Fn(&str, &str) -> Result<Template, Problem>,
    ) -> Result<VmTemplates, Problem> {
        if environment != Environment::Vm {
            return Err(Problem::new("vm: needs environment: vm", &["vm:"]));
        }
        if let Some(key) = vm.image.keys().find(|k| !IMAGE_KEYS.contains(&k.as_str())) {
            return Err(Problem::new(
                format!(
                    "vm.image: unknown key {key:?} (known: {})",
                    IMAGE_KEYS.join(", ")
                ),
                &[&format!("{key}:"), "image:"],
            ));
        }
        if vm.blank_disk_mb.is_some() && !vm.image.is_empty() {
            return Err(Problem::new(
                "vm: a VM is either blank (blank_disk_mb) or of an image, not both",
                &["blank_disk_mb:", "vm:"],
            ));
        }
        if vm.blank_disk_mb.is_some() && vm.iso.is_none() {
            return Err(Problem::new(
                "vm: a blank VM needs an iso to boot from",
                &["blank_disk_mb:", "vm:"],
            ));
        }
        if vm.kernel_from_item && vm.blank_disk_mb.is_some() {
            return Err(Problem::new(
                "vm: kernel_from_item boots an image's userspace; a blank VM has none",
                &["kernel_from_item:", "vm:"],
            ));
        }
        let image = vm
            .image
            .iter()
            .map(|(k, v)| Ok((k.clone(), template(v, k)?)))
            .collect::<Result<Vec<_>, Problem>>()?;
        let iso = match &vm.iso {
            Some(iso) => Some((template(&iso.url, "url")?, template(&iso.sha256, "sha256")?)),
            None => None,
        };
        Ok(VmTemplates {
            image,
            blank_disk_mb: vm.blank_disk_mb,
            iso,
            kernel_from_item: vm.kernel_from_item,
        })
    }

    /// Every template, for the fields of the message they need.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        let iso = self.iso.iter().flat_map(|(url, sum)| [url, sum]);
        self.image.iter().map(|(_, t)| t).chain(iso)
    }

    pub fn render(&self, scope: &Scope<'_>) -> Result<VmRequest, String> {
        let mut image = ImageQuery::default();
        for (key, template) in &self.image {
            let value = Some(template.render(scope)?);
            match key.as_str() {
                "name" => image.name = value,
                "distro" => image.distro = value,
                "release" => image.release = value,
                _ => image.flavour = value,
            }
        }
        let iso = match &self.iso {
            Some((url, sha256)) => Some(RemoteFile {
                url: url.render(scope)?,
                sha256: sha256.render(scope)?,
            }),
            None => None,
        };
        Ok(VmRequest {
            image,
            blank_disk_mb: self.blank_disk_mb,
            iso,
            kernel_from_item: self.kernel_from_item,
        })
    }
}
