// The graph library for the map: cytoscape with the fcose layout. One
// module, imported on demand by map.js, so that the build makes it one
// chunk loaded only when the map is opened (and no chunk the app itself
// must fetch before it starts).
import cytoscape from 'cytoscape';
import fcose from 'cytoscape-fcose';

cytoscape.use(fcose);

export default cytoscape;
