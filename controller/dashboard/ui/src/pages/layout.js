// The force layout for small maps (fcose), imported on demand by map.js
// only when a map small enough for a force layout is drawn, so that the
// large map does not fetch and parse it before its first frame.
import fcose from 'cytoscape-fcose';

export default fcose;
