"""The netns kubelet: runs a simulated node's pods as processes in Linux network namespaces.

- :mod:`.controller` — :class:`Kubelet`: deployments/daemonsets → pods, pods → :class:`PodRuntime`;
- :mod:`.runtime` — one pod: network, volumes, init containers, containers, status, teardown;
- :mod:`.launch` — the first process of each container (mounts, capabilities, exec);
- :mod:`.images` — image name → the repository Dockerfile's ENTRYPOINT/COPY/WORKDIR;
- :mod:`.volumes` — configMap/secret/emptyDir/hostPath volumes and the service-account token;
- :mod:`.cluster` — :class:`SimCluster`: topology + internet + API server + kubelet in one object;
- :mod:`.cli` — ``python -m kubesim kubelet``.
"""
