// The graph library for the map: cytoscape. One module, imported on
// demand by map.js, so that the build makes it one chunk loaded only when
// the map is opened (and no chunk the app itself must fetch before it
// starts). The force layout (fcose, with cose-base and layout-base, a
// fifth of the library's bytes) is a chunk of its own (layout.js): a
// large map is placed by map.js and never needs it.
import cytoscape from 'cytoscape';

export default cytoscape;
