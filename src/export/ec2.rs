//! EC2: an import-ready disk, the `containers.json` that `aws ec2 import-image` reads,
//! per-node user-data, and a LAUNCH.md with the exact aws commands. mesobake makes no
//! call to AWS; the user runs the commands.
//!
//! The disk is a streamOptimized VMDK: import-image accepts it, and it is the smallest
//! of the formats it takes (raw and fixed VHD upload the whole virtual size).

use std::path::Path;

use anyhow::{Context, Result};

/// One instance to launch and its user-data.
#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Node {
    /// The node name (a hostname from the topology, or the image name).
    pub name: String,
    /// Its `#cloud-config` user-data.
    pub user_data: String,
}

/// The files of one image's EC2 kit.
#[derive(Debug, Clone)]
pub struct Ec2Kit {
    /// The image name.
    pub image: String,
    /// The disk file name in the same directory.
    pub disk_file: String,
    /// The disk's import format (`vmdk`, `raw` or `vhd`).
    pub disk_format: String,
    /// The nodes to launch, each with its user-data.
    pub nodes: Vec<Ec2Node>,
    /// A suggested instance type.
    pub instance_type: String,
}

/// The placeholder the user replaces with their S3 bucket.
pub const BUCKET_PLACEHOLDER: &str = "YOUR-BUCKET";

impl Ec2Kit {
    /// The S3 key the disk is uploaded to.
    pub fn s3_key(&self) -> String {
        format!("mesobake/{}", self.disk_file)
    }

    /// `containers.json` for `aws ec2 import-image --disk-containers`.
    pub fn containers_json(&self) -> String {
        let v = serde_json::json!([{
            "Description": format!("mesobake {}", self.image),
            "Format": self.disk_format,
            "UserBucket": {"S3Bucket": BUCKET_PLACEHOLDER, "S3Key": self.s3_key()},
        }]);
        let mut s = serde_json::to_string_pretty(&v).expect("json");
        s.push('\n');
        s
    }

    /// The user-data file name of a node.
    pub fn user_data_file(&self, node: &Ec2Node) -> String {
        if node.name == self.image {
            format!("{}.ec2.user-data", self.image)
        } else {
            format!("{}.{}.ec2.user-data", self.image, node.name)
        }
    }

    /// LAUNCH.md: upload, import, wait, run-instances with each node's user-data.
    pub fn launch_md(&self) -> String {
        let img = &self.image;
        let containers = format!("{img}.ec2.containers.json");
        let mut s = format!(
            "# Launching {img} on EC2\n\n\
mesobake made these files; it makes no call to AWS. The import needs the `vmimport`\n\
service role (see AWS's VM Import/Export guide) and an S3 bucket in your region.\n\n\
```sh\n\
BUCKET=my-bucket            # yours\n\
aws s3 cp {disk} s3://$BUCKET/{key}\n\
sed \"s/{ph}/$BUCKET/\" {containers} > containers.json\n\
aws ec2 import-image --description 'mesobake {img}' --platform Linux \\\n\
    --boot-mode legacy-bios --disk-containers file://containers.json\n\
# Wait until Status is \"completed\", then note the ImageId (ami-...):\n\
aws ec2 describe-import-image-tasks --import-task-ids import-ami-XXXXXXXX\n\
AMI=ami-XXXXXXXX\n\
```\n\n",
            disk = self.disk_file,
            key = self.s3_key(),
            ph = BUCKET_PLACEHOLDER,
        );
        s += "Launch each node with its user-data (add your --key-name, --subnet-id and\n--security-group-ids):\n\n```sh\n";
        for n in &self.nodes {
            s += &format!(
                "aws ec2 run-instances --image-id $AMI --instance-type {} --count 1 \\\n    --tag-specifications 'ResourceType=instance,Tags=[{{Key=Name,Value={}}}]' \\\n    --user-data file://{}\n",
                self.instance_type,
                n.name,
                self.user_data_file(n)
            );
        }
        s += "```\n\nThe image's cloud-init reads the user-data from EC2's metadata service; the first-boot\nconfigurator then prints `mesobake: configured role=... ip=... zk=...` on the console\n(`aws ec2 get-console-output --instance-id i-...`).\n";
        s
    }

    /// Writes containers.json, LAUNCH.md and the user-data files into `dir`; returns the
    /// file names written.
    pub fn write(&self, dir: &Path) -> Result<Vec<String>> {
        let mut files = Vec::new();
        let mut put = |name: String, body: &str| -> Result<()> {
            let p = dir.join(&name);
            std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
            files.push(name);
            Ok(())
        };
        put(
            format!("{}.ec2.containers.json", self.image),
            &self.containers_json(),
        )?;
        put(format!("{}.ec2.LAUNCH.md", self.image), &self.launch_md())?;
        for n in &self.nodes {
            put(self.user_data_file(n), &n.user_data)?;
        }
        Ok(files)
    }
}

/// The user-data for an image built without a topology. A role with ZooKeeper comes up
/// as a one-node cluster on its own; an agent-only role needs the ZooKeeper URL, the
/// same for every instance (an autoscaling group's shared user-data), so it gets a
/// placeholder to edit.
pub fn default_user_data(runs_zookeeper: bool) -> String {
    let mut s = crate::seed::NodeSeed::default();
    if !runs_zookeeper {
        s.node_env.insert(
            "MESOBAKE_ZK".into(),
            "zk://ZK-HOST-1:2181,ZK-HOST-2:2181,ZK-HOST-3:2181/mesos".into(),
        );
    }
    s.user_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_notes_name_every_file() {
        let k = Ec2Kit {
            image: "slave-only".into(),
            disk_file: "slave-only.ec2.vmdk".into(),
            disk_format: "vmdk".into(),
            nodes: vec![Ec2Node {
                name: "slave-only".into(),
                user_data: default_user_data(false),
            }],
            instance_type: "t3.large".into(),
        };
        let md = k.launch_md();
        assert!(
            md.contains("aws s3 cp slave-only.ec2.vmdk s3://$BUCKET/mesobake/slave-only.ec2.vmdk")
        );
        assert!(md.contains("--disk-containers file://containers.json"));
        assert!(md.contains("--user-data file://slave-only.ec2.user-data"));
        let c: serde_json::Value = serde_json::from_str(&k.containers_json()).unwrap();
        assert_eq!(c[0]["Format"], "vmdk");
        assert_eq!(c[0]["UserBucket"]["S3Key"], "mesobake/slave-only.ec2.vmdk");
        assert!(k.nodes[0].user_data.contains("MESOBAKE_ZK="));
    }
}
