//! The greenslice wire contract: generated messages, clients and servers.
//!
//! `v1` is the versioned greenslice API (tenant, agent, ops and kubelet services); `deviceplugin` and
//! `podresources` are the kubelet's APIs, wire-compatible with upstream.

pub mod client;

/// greenslice API, version 1.
pub mod v1 {
    tonic::include_proto!("greenslice.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("greenslice_descriptor");
}

/// The kubelet device-plugin API (upstream package `v1beta1`, k8s.io/kubelet
/// pkg/apis/deviceplugin/v1beta1): `Registration` (served by the kubelet) and `DevicePlugin` (served by
/// the node agent).
pub mod deviceplugin {
    /// Device-plugin API version 1beta1.
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");

        /// The version string a plugin registers with.
        pub const VERSION: &str = "v1beta1";
        /// Socket file name of the kubelet's Registration service in the device-plugins folder.
        pub const KUBELET_SOCKET: &str = "kubelet.sock";
        /// Default device-plugins folder.
        pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins/";
        /// `Device.health` of a usable device.
        pub const HEALTHY: &str = "Healthy";
        /// `Device.health` of a device the kubelet must not hand out.
        pub const UNHEALTHY: &str = "Unhealthy";
    }
}

/// The kubelet pod-resources API (upstream package `v1`, k8s.io/kubelet pkg/apis/podresources/v1):
/// which pod and container holds which device.
pub mod podresources {
    /// Pod-resources API version 1.
    pub mod v1 {
        tonic::include_proto!("v1");

        /// Default socket of the kubelet's pod-resources service.
        pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
    }
}

/// The kubelet's plugin registration API (upstream k8s.io/kubelet pkg/apis/pluginregistration/v1,
/// proto package `pluginregistration`): a plugin serves `Registration` on a socket in the kubelet's
/// `plugins_registry` folder; the kubelet finds it there, asks `GetInfo` and reports back.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");

    /// `PluginInfo.type` of a DRA driver.
    pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
    /// Default folder the kubelet watches for registration sockets.
    pub const DEFAULT_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
}

/// The kubelet's DRA plugin API (upstream k8s.io/kubelet pkg/apis/dra): `DRAPlugin`, served by the
/// driver, in the two versions kubelets of the supported releases speak.
pub mod dra {
    /// DRA plugin API v1 (kubelet 1.34 and later).
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");

        /// The version string a driver registers with (the gRPC service name).
        pub const VERSION: &str = "v1.DRAPlugin";
    }
    /// DRA plugin API v1beta1 (kubelet 1.32 and later).
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");

        /// The version string a driver registers with (the gRPC service name).
        pub const VERSION: &str = "v1beta1.DRAPlugin";
    }
}
