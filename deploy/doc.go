// Package deploy holds voxserve's deployment manifests: kubernetes/ (a
// Deployment, Services, an autoscaler on queue time, a disruption budget)
// and kserve/ (a ServingRuntime and an example InferenceService). It has
// no code; its tests check the manifests against Kubernetes' own types and
// against a real voxserve process started with the manifests' arguments.
package deploy
