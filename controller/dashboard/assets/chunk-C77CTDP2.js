var d=Object.defineProperty;var e=(b,a)=>()=>(a||b((a={exports:{}}).exports,a),a.exports),f=(b,a)=>{for(var c in a)d(b,c,{get:a[c],enumerable:!0})};export{e as a,f as b};
